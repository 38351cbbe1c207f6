"""The instantiation generators' shared entry point: write each generated .cu file into
kernels/cuda/instantiations/, or with --check verify that every one exists and is current."""
import argparse
import pathlib
import sys


def main(files, description, what="instantiation files"):
    """files: the generator's (name, text) pairs; description: its usage text (__doc__); what:
    the files' name in the stale-files message. Returns the process exit code."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="verify instead of writing")
    args = parser.parse_args()
    out = pathlib.Path(__file__).resolve().parent / "instantiations"
    out.mkdir(exist_ok=True)
    stale = []
    for name, text in files:
        path = out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        script = pathlib.Path(sys.argv[0]).name
        print(f"stale or missing {what} (run {script}):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0
