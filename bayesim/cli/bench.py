"""`bayesim bench [--json] [--floor]`: crossbar simulator speed against BLAS and a plain numpy implementation."""
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
    p.add_argument("--floor", action="store_true",
                   help="also time, one by one, the Gaussian draws and PCM cell reads every sample must make per "
                        "weight: a lower bound of the weight build and of the best ratio to BLAS")
    p.add_argument("--samples", type=int, default=32,
                   help=f"Monte-Carlo samples, 1 to {MAX_SAMPLES} (default 32)")
    p.add_argument("--repeat", type=int, default=5,
                   help=f"interleaved timing rounds, 1 to {MAX_REPEAT}; medians reported (default 5)")
    p.set_defaults(func=_handler)


def _handler(args) -> int:
    from bayesim.crossbar import bench
    from bayesim.errors import BayesimError

    for flag, value, hi in (("--samples", args.samples, MAX_SAMPLES), ("--repeat", args.repeat, MAX_REPEAT)):
        if not 1 <= value <= hi:
            raise BayesimError(f"{flag} {value} is out of range; allowed 1 to {hi}")
    r = bench.run(samples=args.samples, repeat=args.repeat)
    f = bench.floor(r) if args.floor else None
    if args.json:
        print(json.dumps(r if f is None else {**r, "floor": f}, indent=2))
    else:
        print(bench.format_report(r) + ("" if f is None else "\n" + bench.format_floor(f)))
    return 0
