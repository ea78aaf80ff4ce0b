"""`bayesim bench [--json]`: crossbar simulator speed against BLAS and a plain numpy implementation."""
from __future__ import annotations

import json

#: Upper limits of the timing workload (the default is S = 32, 3 rounds).
MAX_SAMPLES = 10000
MAX_REPEAT = 100


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure crossbar simulator speed (ratios vs BLAS and numpy)",
                              description="Time the 784x512 / batch 256 / S=32 / JQ 4-bit / PCM / 8-bit DAC+ADC "
                                          "workload against BLAS float32 matmul and a numpy baseline, in one run.")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--samples", type=int, default=32,
                   help=f"Monte-Carlo samples, 1 to {MAX_SAMPLES} (default 32)")
    p.add_argument("--repeat", type=int, default=3,
                   help=f"interleaved timing rounds, 1 to {MAX_REPEAT}; medians reported (default 3)")
    p.set_defaults(func=_handler)


def _handler(args) -> int:
    from bayesim.crossbar import bench
    from bayesim.errors import BayesimError

    for flag, value, hi in (("--samples", args.samples, MAX_SAMPLES), ("--repeat", args.repeat, MAX_REPEAT)):
        if not 1 <= value <= hi:
            raise BayesimError(f"{flag} {value} is out of range; allowed 1 to {hi}")
    r = bench.run(samples=args.samples, repeat=args.repeat)
    print(json.dumps(r, indent=2) if args.json else bench.format_report(r))
    return 0
