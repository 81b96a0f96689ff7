"""``python -m lmxray.evaluate evaluate DATA ...``: the evaluate command on its own."""

import typer

from .cli import standalone_app

if __name__ == "__main__":
    typer.main.get_command(standalone_app()).main(prog_name="lmxray")
