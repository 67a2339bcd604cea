"""``python -m resnext_det.engine.fast`` used to time the training layouts with its own loop;
that measurement is now the benchmark's ``train`` part, under the one A/A-controlled protocol,
and its record is what the training ``auto`` rule's table is generated from. This stub only
points there (engine/ does not import the benchmark)."""
import sys

MESSAGE = ("the training-layout timing moved to the benchmark (one protocol, A/A control, records per CPU kind):\n"
           "    python tools/benchmark.py --parts train --presets X-101-32x4d --size 800 1333\n"
           "then `python tools/benchmark.py --render-readme` regenerates the auto rule's table.")

if __name__ == "__main__":
    print(MESSAGE, file=sys.stderr)
    sys.exit(2)
