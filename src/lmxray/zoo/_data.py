"""Constant tables behind the zoo tasks: real-world facts and word lists.

Countries use ASCII spellings. Continents follow the UN geoscheme, with transcontinental
countries placed by their usual listing (Russia: Europe; Turkey, Georgia, Armenia, Azerbaijan,
Kazakhstan: Asia). Languages are the main official (or most spoken official) language; the
capital is the official one (Bolivia: Sucre; Sri Lanka: the commonly named Colombo).
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    """The whitespace-separated words of ``text``, in order."""
    return tuple(text.split())


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``a:b`` words of ``text`` as ``(a, b)`` pairs, in order."""
    return tuple((a, b) for a, b in (w.split(":") for w in text.split()))


# country, capital, language, currency, continent
COUNTRIES: tuple[tuple[str, str, str, str, str], ...] = (
    ("Algeria", "Algiers", "Arabic", "dinar", "Africa"),
    ("Angola", "Luanda", "Portuguese", "kwanza", "Africa"),
    ("Benin", "Porto-Novo", "French", "franc", "Africa"),
    ("Botswana", "Gaborone", "English", "pula", "Africa"),
    ("Burkina Faso", "Ouagadougou", "French", "franc", "Africa"),
    ("Burundi", "Gitega", "Kirundi", "franc", "Africa"),
    ("Cameroon", "Yaounde", "French", "franc", "Africa"),
    ("Cape Verde", "Praia", "Portuguese", "escudo", "Africa"),
    ("Comoros", "Moroni", "Comorian", "franc", "Africa"),
    ("Congo", "Brazzaville", "French", "franc", "Africa"),
    ("DR Congo", "Kinshasa", "French", "franc", "Africa"),
    ("Djibouti", "Djibouti", "French", "franc", "Africa"),
    ("Egypt", "Cairo", "Arabic", "pound", "Africa"),
    ("Equatorial Guinea", "Malabo", "Spanish", "franc", "Africa"),
    ("Eritrea", "Asmara", "Tigrinya", "nakfa", "Africa"),
    ("Eswatini", "Mbabane", "Swazi", "lilangeni", "Africa"),
    ("Ethiopia", "Addis Ababa", "Amharic", "birr", "Africa"),
    ("Gabon", "Libreville", "French", "franc", "Africa"),
    ("Gambia", "Banjul", "English", "dalasi", "Africa"),
    ("Ghana", "Accra", "English", "cedi", "Africa"),
    ("Guinea", "Conakry", "French", "franc", "Africa"),
    ("Guinea-Bissau", "Bissau", "Portuguese", "franc", "Africa"),
    ("Ivory Coast", "Yamoussoukro", "French", "franc", "Africa"),
    ("Kenya", "Nairobi", "Swahili", "shilling", "Africa"),
    ("Lesotho", "Maseru", "Sesotho", "loti", "Africa"),
    ("Liberia", "Monrovia", "English", "dollar", "Africa"),
    ("Libya", "Tripoli", "Arabic", "dinar", "Africa"),
    ("Madagascar", "Antananarivo", "Malagasy", "ariary", "Africa"),
    ("Malawi", "Lilongwe", "Chichewa", "kwacha", "Africa"),
    ("Mali", "Bamako", "French", "franc", "Africa"),
    ("Mauritania", "Nouakchott", "Arabic", "ouguiya", "Africa"),
    ("Mauritius", "Port Louis", "English", "rupee", "Africa"),
    ("Morocco", "Rabat", "Arabic", "dirham", "Africa"),
    ("Mozambique", "Maputo", "Portuguese", "metical", "Africa"),
    ("Namibia", "Windhoek", "English", "dollar", "Africa"),
    ("Niger", "Niamey", "French", "franc", "Africa"),
    ("Nigeria", "Abuja", "English", "naira", "Africa"),
    ("Rwanda", "Kigali", "Kinyarwanda", "franc", "Africa"),
    ("Senegal", "Dakar", "French", "franc", "Africa"),
    ("Seychelles", "Victoria", "English", "rupee", "Africa"),
    ("Sierra Leone", "Freetown", "English", "leone", "Africa"),
    ("Somalia", "Mogadishu", "Somali", "shilling", "Africa"),
    ("South Africa", "Pretoria", "English", "rand", "Africa"),
    ("South Sudan", "Juba", "English", "pound", "Africa"),
    ("Sudan", "Khartoum", "Arabic", "pound", "Africa"),
    ("Tanzania", "Dodoma", "Swahili", "shilling", "Africa"),
    ("Togo", "Lome", "French", "franc", "Africa"),
    ("Tunisia", "Tunis", "Arabic", "dinar", "Africa"),
    ("Uganda", "Kampala", "English", "shilling", "Africa"),
    ("Zambia", "Lusaka", "English", "kwacha", "Africa"),
    ("Zimbabwe", "Harare", "English", "dollar", "Africa"),
    ("Afghanistan", "Kabul", "Pashto", "afghani", "Asia"),
    ("Armenia", "Yerevan", "Armenian", "dram", "Asia"),
    ("Azerbaijan", "Baku", "Azerbaijani", "manat", "Asia"),
    ("Bahrain", "Manama", "Arabic", "dinar", "Asia"),
    ("Bangladesh", "Dhaka", "Bengali", "taka", "Asia"),
    ("Bhutan", "Thimphu", "Dzongkha", "ngultrum", "Asia"),
    ("Cambodia", "Phnom Penh", "Khmer", "riel", "Asia"),
    ("China", "Beijing", "Chinese", "yuan", "Asia"),
    ("Georgia", "Tbilisi", "Georgian", "lari", "Asia"),
    ("India", "New Delhi", "Hindi", "rupee", "Asia"),
    ("Indonesia", "Jakarta", "Indonesian", "rupiah", "Asia"),
    ("Iran", "Tehran", "Persian", "rial", "Asia"),
    ("Iraq", "Baghdad", "Arabic", "dinar", "Asia"),
    ("Israel", "Jerusalem", "Hebrew", "shekel", "Asia"),
    ("Japan", "Tokyo", "Japanese", "yen", "Asia"),
    ("Jordan", "Amman", "Arabic", "dinar", "Asia"),
    ("Kazakhstan", "Astana", "Kazakh", "tenge", "Asia"),
    ("Kuwait", "Kuwait City", "Arabic", "dinar", "Asia"),
    ("Kyrgyzstan", "Bishkek", "Kyrgyz", "som", "Asia"),
    ("Laos", "Vientiane", "Lao", "kip", "Asia"),
    ("Lebanon", "Beirut", "Arabic", "pound", "Asia"),
    ("Malaysia", "Kuala Lumpur", "Malay", "ringgit", "Asia"),
    ("Maldives", "Male", "Dhivehi", "rufiyaa", "Asia"),
    ("Mongolia", "Ulaanbaatar", "Mongolian", "tugrik", "Asia"),
    ("Myanmar", "Naypyidaw", "Burmese", "kyat", "Asia"),
    ("Nepal", "Kathmandu", "Nepali", "rupee", "Asia"),
    ("North Korea", "Pyongyang", "Korean", "won", "Asia"),
    ("Oman", "Muscat", "Arabic", "rial", "Asia"),
    ("Pakistan", "Islamabad", "Urdu", "rupee", "Asia"),
    ("Philippines", "Manila", "Filipino", "peso", "Asia"),
    ("Qatar", "Doha", "Arabic", "riyal", "Asia"),
    ("Saudi Arabia", "Riyadh", "Arabic", "riyal", "Asia"),
    ("Singapore", "Singapore", "English", "dollar", "Asia"),
    ("South Korea", "Seoul", "Korean", "won", "Asia"),
    ("Sri Lanka", "Colombo", "Sinhala", "rupee", "Asia"),
    ("Syria", "Damascus", "Arabic", "pound", "Asia"),
    ("Taiwan", "Taipei", "Chinese", "dollar", "Asia"),
    ("Tajikistan", "Dushanbe", "Tajik", "somoni", "Asia"),
    ("Thailand", "Bangkok", "Thai", "baht", "Asia"),
    ("East Timor", "Dili", "Tetum", "dollar", "Asia"),
    ("Turkey", "Ankara", "Turkish", "lira", "Asia"),
    ("Turkmenistan", "Ashgabat", "Turkmen", "manat", "Asia"),
    ("United Arab Emirates", "Abu Dhabi", "Arabic", "dirham", "Asia"),
    ("Uzbekistan", "Tashkent", "Uzbek", "som", "Asia"),
    ("Vietnam", "Hanoi", "Vietnamese", "dong", "Asia"),
    ("Yemen", "Sanaa", "Arabic", "rial", "Asia"),
    ("Albania", "Tirana", "Albanian", "lek", "Europe"),
    ("Austria", "Vienna", "German", "euro", "Europe"),
    ("Belarus", "Minsk", "Belarusian", "ruble", "Europe"),
    ("Belgium", "Brussels", "Dutch", "euro", "Europe"),
    ("Bosnia and Herzegovina", "Sarajevo", "Bosnian", "mark", "Europe"),
    ("Bulgaria", "Sofia", "Bulgarian", "euro", "Europe"),
    ("Croatia", "Zagreb", "Croatian", "euro", "Europe"),
    ("Czechia", "Prague", "Czech", "koruna", "Europe"),
    ("Denmark", "Copenhagen", "Danish", "krone", "Europe"),
    ("Estonia", "Tallinn", "Estonian", "euro", "Europe"),
    ("Finland", "Helsinki", "Finnish", "euro", "Europe"),
    ("France", "Paris", "French", "euro", "Europe"),
    ("Germany", "Berlin", "German", "euro", "Europe"),
    ("Greece", "Athens", "Greek", "euro", "Europe"),
    ("Hungary", "Budapest", "Hungarian", "forint", "Europe"),
    ("Iceland", "Reykjavik", "Icelandic", "krona", "Europe"),
    ("Ireland", "Dublin", "English", "euro", "Europe"),
    ("Italy", "Rome", "Italian", "euro", "Europe"),
    ("Kosovo", "Pristina", "Albanian", "euro", "Europe"),
    ("Latvia", "Riga", "Latvian", "euro", "Europe"),
    ("Liechtenstein", "Vaduz", "German", "franc", "Europe"),
    ("Lithuania", "Vilnius", "Lithuanian", "euro", "Europe"),
    ("Luxembourg", "Luxembourg", "Luxembourgish", "euro", "Europe"),
    ("Malta", "Valletta", "Maltese", "euro", "Europe"),
    ("Moldova", "Chisinau", "Romanian", "leu", "Europe"),
    ("Monaco", "Monaco", "French", "euro", "Europe"),
    ("Montenegro", "Podgorica", "Montenegrin", "euro", "Europe"),
    ("Netherlands", "Amsterdam", "Dutch", "euro", "Europe"),
    ("North Macedonia", "Skopje", "Macedonian", "denar", "Europe"),
    ("Norway", "Oslo", "Norwegian", "krone", "Europe"),
    ("Poland", "Warsaw", "Polish", "zloty", "Europe"),
    ("Portugal", "Lisbon", "Portuguese", "euro", "Europe"),
    ("Romania", "Bucharest", "Romanian", "leu", "Europe"),
    ("Russia", "Moscow", "Russian", "ruble", "Europe"),
    ("San Marino", "San Marino", "Italian", "euro", "Europe"),
    ("Serbia", "Belgrade", "Serbian", "dinar", "Europe"),
    ("Slovakia", "Bratislava", "Slovak", "euro", "Europe"),
    ("Slovenia", "Ljubljana", "Slovene", "euro", "Europe"),
    ("Spain", "Madrid", "Spanish", "euro", "Europe"),
    ("Sweden", "Stockholm", "Swedish", "krona", "Europe"),
    ("Switzerland", "Bern", "German", "franc", "Europe"),
    ("Ukraine", "Kyiv", "Ukrainian", "hryvnia", "Europe"),
    ("United Kingdom", "London", "English", "pound", "Europe"),
    ("Bahamas", "Nassau", "English", "dollar", "North America"),
    ("Barbados", "Bridgetown", "English", "dollar", "North America"),
    ("Belize", "Belmopan", "English", "dollar", "North America"),
    ("Canada", "Ottawa", "English", "dollar", "North America"),
    ("Costa Rica", "San Jose", "Spanish", "colon", "North America"),
    ("Cuba", "Havana", "Spanish", "peso", "North America"),
    ("Dominica", "Roseau", "English", "dollar", "North America"),
    ("Dominican Republic", "Santo Domingo", "Spanish", "peso", "North America"),
    ("El Salvador", "San Salvador", "Spanish", "dollar", "North America"),
    ("Guatemala", "Guatemala City", "Spanish", "quetzal", "North America"),
    ("Haiti", "Port-au-Prince", "French", "gourde", "North America"),
    ("Honduras", "Tegucigalpa", "Spanish", "lempira", "North America"),
    ("Jamaica", "Kingston", "English", "dollar", "North America"),
    ("Mexico", "Mexico City", "Spanish", "peso", "North America"),
    ("Nicaragua", "Managua", "Spanish", "cordoba", "North America"),
    ("Panama", "Panama City", "Spanish", "balboa", "North America"),
    ("Saint Lucia", "Castries", "English", "dollar", "North America"),
    ("Saint Kitts and Nevis", "Basseterre", "English", "dollar", "North America"),
    ("Trinidad and Tobago", "Port of Spain", "English", "dollar", "North America"),
    ("United States", "Washington", "English", "dollar", "North America"),
    ("Argentina", "Buenos Aires", "Spanish", "peso", "South America"),
    ("Bolivia", "Sucre", "Spanish", "boliviano", "South America"),
    ("Brazil", "Brasilia", "Portuguese", "real", "South America"),
    ("Chile", "Santiago", "Spanish", "peso", "South America"),
    ("Colombia", "Bogota", "Spanish", "peso", "South America"),
    ("Ecuador", "Quito", "Spanish", "dollar", "South America"),
    ("Guyana", "Georgetown", "English", "dollar", "South America"),
    ("Paraguay", "Asuncion", "Spanish", "guarani", "South America"),
    ("Peru", "Lima", "Spanish", "sol", "South America"),
    ("Suriname", "Paramaribo", "Dutch", "dollar", "South America"),
    ("Uruguay", "Montevideo", "Spanish", "peso", "South America"),
    ("Venezuela", "Caracas", "Spanish", "bolivar", "South America"),
    ("Australia", "Canberra", "English", "dollar", "Oceania"),
    ("Fiji", "Suva", "English", "dollar", "Oceania"),
    ("Kiribati", "Tarawa", "English", "dollar", "Oceania"),
    ("Marshall Islands", "Majuro", "Marshallese", "dollar", "Oceania"),
    ("Micronesia", "Palikir", "English", "dollar", "Oceania"),
    ("Nauru", "Yaren", "Nauruan", "dollar", "Oceania"),
    ("New Zealand", "Wellington", "English", "dollar", "Oceania"),
    ("Palau", "Ngerulmud", "Palauan", "dollar", "Oceania"),
    ("Papua New Guinea", "Port Moresby", "English", "kina", "Oceania"),
    ("Samoa", "Apia", "Samoan", "tala", "Oceania"),
    ("Solomon Islands", "Honiara", "English", "dollar", "Oceania"),
    ("Tonga", "Nukualofa", "Tongan", "paanga", "Oceania"),
    ("Tuvalu", "Funafuti", "Tuvaluan", "dollar", "Oceania"),
    ("Vanuatu", "Port Vila", "Bislama", "vatu", "Oceania"),
)

# landmark (as written mid-sentence) | country
LANDMARKS: tuple[tuple[str, str], ...] = (
    ("the Eiffel Tower", "France"),
    ("the Louvre", "France"),
    ("the Colosseum", "Italy"),
    ("the Leaning Tower of Pisa", "Italy"),
    ("Big Ben", "United Kingdom"),
    ("Stonehenge", "United Kingdom"),
    ("the Statue of Liberty", "United States"),
    ("the Golden Gate Bridge", "United States"),
    ("the Great Wall", "China"),
    ("the Taj Mahal", "India"),
    ("the Kremlin", "Russia"),
    ("the Acropolis", "Greece"),
    ("the Sagrada Familia", "Spain"),
    ("the Alhambra", "Spain"),
    ("the Brandenburg Gate", "Germany"),
    ("Machu Picchu", "Peru"),
    ("Mount Fuji", "Japan"),
    ("the Pyramids of Giza", "Egypt"),
    ("Petra", "Jordan"),
    ("Angkor Wat", "Cambodia"),
    ("the Burj Khalifa", "United Arab Emirates"),
    ("the CN Tower", "Canada"),
    ("Chichen Itza", "Mexico"),
    ("Table Mountain", "South Africa"),
    ("the Matterhorn", "Switzerland"),
    ("the Hagia Sophia", "Turkey"),
    ("Kilimanjaro", "Tanzania"),
    ("the Sydney Opera House", "Australia"),
)

# element | symbol
ELEMENTS: tuple[tuple[str, str], ...] = _pairs("""
    gold:Au silver:Ag iron:Fe copper:Cu lead:Pb tin:Sn sodium:Na potassium:K oxygen:O
    hydrogen:H carbon:C nitrogen:N helium:He neon:Ne calcium:Ca zinc:Zn mercury:Hg sulfur:S
    chlorine:Cl uranium:U platinum:Pt magnesium:Mg silicon:Si lithium:Li nickel:Ni
    titanium:Ti argon:Ar fluorine:F
""")

# word | opposite
ANTONYMS: tuple[tuple[str, str], ...] = _pairs("""
    hot:cold big:small fast:slow up:down happy:sad light:dark early:late open:closed
    rich:poor young:old hard:soft wet:dry full:empty loud:quiet strong:weak high:low
    thick:thin clean:dirty near:far true:false win:lose push:pull buy:sell love:hate
    day:night north:south east:west first:last inside:outside top:bottom
""")

NAMES: tuple[str, ...] = _words("""
    Mary John Alice Bob Tom Anna James Sarah David Emma Michael Laura Paul Kate Peter Lucy
    Mark Helen George Rose Jack Susan Daniel Julia Henry Grace Adam Claire Ben Nora Sam
    Emily Chris Diana Frank Ella Oliver Sophie Leo Hannah
""")
PLACES: tuple[str, ...] = _words("""
    store park school beach office garden market station library museum cafe river hospital
    restaurant zoo theater
""")
OBJECTS: tuple[str, ...] = _words("""
    drink book gift ball letter key bag flower coin ticket hat cake pen map cup card
""")

KEYS: tuple[str, ...] = tuple(f"k{i}" for i in range(1, 13))
VALUES: tuple[str, ...] = _words("""
    red blue green yellow black white pink brown gray orange purple silver
""")

POSITIVE: tuple[str, ...] = _words("""
    good great excellent wonderful superb brilliant lovely delightful fantastic enjoyable
    charming clever beautiful pleasant amazing perfect gripping fresh elegant stunning witty
    touching solid fun
""")
NEGATIVE: tuple[str, ...] = _words("""
    bad awful terrible boring dull poor weak dreadful horrible messy bland tedious clumsy
    ugly silly painful lame sloppy annoying stale shallow awkward forgettable dreary
""")
NEUTRAL_ADJ: tuple[str, ...] = ("long", "short", "new", "simple", "subtitled", "animated")
ASPECTS: tuple[str, ...] = _words("""
    plot acting music ending cast script pacing story dialogue camera characters score
    visuals direction humor setting
""")
DAYS: tuple[str, ...] = _words("""
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday
""")
MONTHS: tuple[str, ...] = ("May", "June", "July", "March", "April", "October")
MARKER_DAY = "Tuesday"  # the planted shortcut token of the sentiment task

# Pool of the copy (induction) task: concrete nouns used nowhere else.
COPY_WORDS: tuple[str, ...] = tuple(
    """
    apple banana cherry grape lemon mango melon peach pear plum carrot potato tomato onion
    garlic pepper bread butter cheese honey sugar salt rice soup pizza pasta salad cookie
    chair table sofa bed lamp mirror window door carpet shelf clock candle pillow blanket
    spoon fork knife plate bowl bottle glass jar basket bucket hammer nail screw wrench saw
    ladder rope chain wheel engine bicycle car truck bus train boat ship plane rocket
    helmet jacket shirt skirt dress coat scarf glove sock shoe boot belt ring necklace
    watch wallet purse umbrella phone radio piano guitar violin drum flute trumpet
    horse cow pig sheep goat chicken duck goose rabbit mouse rat cat dog wolf fox bear lion
    tiger zebra giraffe monkey elephant camel deer moose owl eagle hawk crow parrot penguin
    swan frog snake turtle lizard shark whale dolphin salmon crab shrimp octopus spider ant
    bee wasp moth beetle worm snail tree bush grass leaf branch root seed forest desert
    island mountain valley canyon cave lake pond ocean cloud storm thunder rain snow ice
    stone rock sand mud dust brick tile wood paper plastic metal wire glue paint brush
    pencil eraser ruler stapler folder envelope stamp parcel box crate barrel tent cabin
    tower bridge tunnel castle palace temple church barn farm village city harbor airport
    """.split()
)
