"""``mdl-tvm app style`` and ``mdl-tvm app poem``: the two apps from the shell.

    mdl-tvm app style INPUT.jpg -o OUT.jpg [--size 256] [--compress kmeans:0.5]
                      [--target arm64 --tracker HOST:PORT --key KEY]
    mdl-tvm app poem 春 [--seed N] [--line-length 5|7] [--target arm64 --tracker ... --key ...]
    mdl-tvm app poem --list-chars

`register(subparsers)` adds ``app`` to the main parser (`mdl_tvm.cli`).
"""

from __future__ import annotations

import argparse
import time


def _placement(args):
    from apps.runtime import Placement

    return Placement(target=args.target, tracker=args.tracker, key=args.key,
                     compress=getattr(args, "compress", None))


def _cmd_style(args) -> int:
    from apps.style_transfer import StyleOptions, stylize_file
    from apps.style_transfer.model import WEIGHTS

    start = time.perf_counter()
    path = stylize_file(args.input, args.output, StyleOptions(size=args.size),
                        _placement(args), args.weights or WEIGHTS)
    where = args.target if not args.tracker else f"{args.target} via {args.tracker} ({args.key})"
    extra = f", compressed {args.compress}" if args.compress else ""
    print(f"wrote {path} on {where}{extra} in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_poem(args) -> int:
    from apps.poem import PoemOptions, vocabulary, write_poem
    from apps.poem.model import WEIGHTS

    weights = args.weights or WEIGHTS
    if args.list_chars:
        chars = vocabulary(weights)
        for i in range(0, len(chars), 50):
            print(chars[i:i + 50])
        return 0
    if args.start is None:
        raise ValueError("give a start character, e.g. `mdl-tvm app poem 春`; "
                         "`mdl-tvm app poem --list-chars` lists them")
    options = PoemOptions(line_length=args.line_length, seed=args.seed,
                          temperature=args.temperature)
    print(write_poem(args.start, options, _placement(args), weights))
    return 0


def _placement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="host",
                   help="target profile: host (this machine, default) or a device profile such "
                   "as arm64 (see `mdl-tvm targets`)")
    p.add_argument("--tracker", metavar="HOST:PORT", help="RPC tracker of the device")
    p.add_argument("--key", default="phone", help="device key at the tracker (default phone)")


def _help(parser):
    def show(args) -> int:
        parser.print_help()
        return 2

    return show


def register(subparsers) -> None:
    """Add ``app style`` and ``app poem`` to an argparse subparsers object."""
    app = subparsers.add_parser("app", help="the apps: style transfer, Tang poems")
    app.set_defaults(func=_help(app))
    sub = app.add_subparsers(dest="app_command")

    p = sub.add_parser("style", help="paint a photo in the style of Starry Night")
    p.add_argument("input", metavar="INPUT", help="photo (.jpg / .png)")
    p.add_argument("-o", "--output", required=True, help="output image (.jpg / .png)")
    p.add_argument("--size", type=int, default=256,
                   help="long side of the working resolution in pixels (default 256)")
    p.add_argument("--compress", help="channel compression, e.g. kmeans:0.5")
    p.add_argument("--weights", help="weights .npz (default: the shipped ones)")
    _placement_args(p)
    p.set_defaults(func=_cmd_style)

    p = sub.add_parser("poem", help="write a Tang-style quatrain from a first character")
    p.add_argument("start", nargs="?", metavar="CHAR", help="first character, e.g. 春")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--line-length", type=int, default=5, choices=(5, 7),
                   help="characters per line (default 5)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--list-chars", action="store_true",
                   help="print the characters a poem can start with")
    p.add_argument("--weights", help="model .npz (default: the shipped one)")
    _placement_args(p)
    p.set_defaults(func=_cmd_poem)
