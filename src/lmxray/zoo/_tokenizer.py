"""Train the zoo's byte-level BPE tokenizer with the ``tokenizers`` library.

Words are pre-split as ``" ?[A-Za-z0-9]+"`` (a leading space belongs to the word, letters and
digits stay together so that ``" k7"`` is one word) and runs of punctuation; BPE then merges
bytes inside words. Every answer word of the tasks is frequent in the training corpus, so BPE
learns it as one token. The post-processor prepends ``<bos>``.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIALS = ("<unk>", "<bos>", "<eos>", "<pad>")
PRETOKENIZE = r" ?[A-Za-z0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):  # -> PreTrainedTokenizerFast
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
    )
