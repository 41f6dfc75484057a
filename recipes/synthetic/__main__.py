"""python -m recipes.synthetic generate --seed S --clips N --min-seconds A --max-seconds B --out DIR"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.synthetic",
                                description="synthetic audio-video clips with MMOU-format questions")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write clips, timelines and questions.json into a folder")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--clips", type=int, required=True)
    g.add_argument("--min-seconds", type=float, default=20.0)
    g.add_argument("--max-seconds", type=float, default=180.0)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from recipes.synthetic.generate import generate

    t0 = time.perf_counter()
    try:
        items = generate(args.out, args.seed, args.clips, args.min_seconds, args.max_seconds, progress=not args.quiet)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.clips} clips, {len(items)} questions in {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
