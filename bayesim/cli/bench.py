"""`bayesim bench [--json]`: crossbar simulator speed against BLAS and a plain numpy implementation."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure crossbar simulator speed (ratios vs BLAS and numpy)",
                              description="Time the 784x512 / batch 256 / S=32 / JQ 4-bit / PCM / 8-bit DAC+ADC "
                                          "workload against BLAS float32 matmul and a numpy baseline, in one run.")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--samples", type=int, default=32, help="Monte-Carlo samples (default 32)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved timing rounds; medians reported (default 3)")
    p.set_defaults(func=_handler)


def _handler(args) -> int:
    from bayesim.crossbar import bench
    from bayesim.errors import BayesimError

    if args.samples < 1 or args.repeat < 1:
        raise BayesimError("--samples and --repeat must be >= 1")
    r = bench.run(samples=args.samples, repeat=args.repeat)
    print(json.dumps(r, indent=2) if args.json else bench.format_report(r))
    return 0
