"""Join the long-context benchmark sections into ``benchmarks/results/longcontext.md``."""

from __future__ import annotations

from pathlib import Path

RES = Path(__file__).resolve().parents[1] / "results"
PARTS = ("occlusion", "contextcite", "haystack", "gradients")


def main() -> None:
    text = ["# Long contexts (issue 21)", "",
            "Scripts: `benchmarks/longcontext/*.py` (see docs/context.md). Machine: the 2-core "
            "CPU box shared with other jobs (load 12-25 while measuring: see each table), so "
            "absolute seconds are inflated; each comparison was taken in one process, the two "
            "tools interleaved.", ""]
    for p in PARTS:
        f = RES / f"longcontext-{p}.md"
        text.append(f.read_text() if f.exists() else f"### {p}\n\nnot run\n")
    (RES / "longcontext.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
