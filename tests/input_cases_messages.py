"""Input-table rows (issue 11) for messages and tracebacks: every command, checkpoints, validate, sweeps, pipes."""

from __future__ import annotations

from conftest import tiny_config
from hostile_inputs import (
    ANIMALS_CSV,
    CRAFTED,
    CRAFTED_FOR_RESUME,
    config_text,
    crafted_run,
    huge_model,
    with_character,
)
from input_table import Case

RUNS = ("--runs-dir", "{tmp}/runs")
ANIMALS = tiny_config(data={"source": "csv", "path": "animals.csv", "target": "animal", "validation": 0.25},
                      training__batch__size=4)

MESSAGE_CASES: list[Case] = []

# ---------------------------------------------------------------- item 6: control characters
for label, character in (("NUL", "\x00"), ("bell", "\x07"), ("escape", "\x1b"), ("DEL", "\x7f"), ("C1 CSI", "\x9b")):
    code = f"U+{ord(character):04X}"
    for command in ("train", "validate", "gradcheck"):
        MESSAGE_CASES.append(Case(
            f"yaml-{label}-{command}", {"config.yaml": with_character(character)},
            (command, "config.yaml", *(RUNS if command == "train" else ())), 2,
            ("config.yaml", "line 1", "column 9", code, "expected printable text")))
MESSAGE_CASES += [
    Case("set-value-control-character", {"config.yaml": config_text()},
         ("train", "config.yaml", "--set", "name=ab\x01c", *RUNS), 2, ("--set name", "U+0001", "column 3")),
    Case("set-value-escape-validate", {"config.yaml": config_text()},
         ("validate", "config.yaml", "--set", "loss.type=\x1b[31mmse"), 2, ("--set loss.type", "U+001B")),
]

# ---------------------------------------------------------------- items 6 and 7: a model too large for memory
for command in ("train", "validate", "gradcheck"):
    MESSAGE_CASES.append(Case(
        f"model-too-large-{command}", {"config.yaml": huge_model()},
        (command, "config.yaml", *(RUNS if command == "train" else ())), 2,
        ("config.yaml", "model.layers", "needs about", "TiB", "parameters", "expected at most")))
MESSAGE_CASES.append(Case("model-too-large-float64-gradcheck", {"config.yaml": huge_model()},
                          ("gradcheck", "config.yaml"), 2, ("the gradient check (float64)", "7.3 TiB")))

# ---------------------------------------------------------------- item 6: crafted checkpoints
for label, (craft, word) in CRAFTED.items():
    slug = label.replace(" ", "-")
    MESSAGE_CASES += [
        Case(f"checkpoint-{slug}-eval", {"run": crafted_run(craft)}, ("eval", "run"), 4, ("best.safetensors", word)),
        Case(f"checkpoint-{slug}-landscape", {"run": crafted_run(craft)},
             ("landscape", "run", "--out", "{tmp}/ls"), 4, ("best.safetensors", word)),
    ]

for label, (craft, word) in CRAFTED_FOR_RESUME.items():
    MESSAGE_CASES.append(Case(f"checkpoint-{label.replace(' ', '-')}-resume", {"run": crafted_run(craft)},
                              ("train", "--resume", "run", "--set", "training.epochs=2"), 4,
                              ("last.safetensors", word)))

# ---------------------------------------------------------------- items 10 and 13: after the data is read
for command in ("train", "validate"):
    extra = RUNS if command == "train" else ()
    MESSAGE_CASES += [
        Case(f"units-vs-classes-{command}", {"animals.csv": ANIMALS_CSV, "config.yaml": ANIMALS},
             (command, "config.yaml", *extra), 2,
             ("config.yaml", "model.layers.1.units", "expected 3", "cat, dog, emu", "animals.csv", "received 2")),
        Case(f"batch-size-vs-samples-{command}", {"config.yaml": config_text(training__batch__size=500)},
             (command, "config.yaml", *extra), 2,
             ("config.yaml", "training.batch.size", "expected at most 90", "data.validation", "received 500")),
        Case(f"binary-needs-two-classes-{command}", {"animals.csv": ANIMALS_CSV, "config.yaml": ANIMALS},
             (command, "config.yaml", "--set", "loss.type=binary_cross_entropy", "--set", "model.layers.1.units=1",
              *extra), 3,
             ("animals.csv", "column 'animal'", "expected exactly 2 classes", "config.yaml", "received 3",
              "cat, dog, emu")),
    ]
MESSAGE_CASES += [  # train refused these before issue 11; validate now reads the data as train does
    Case("missing-data-file-validate", {"config.yaml": ANIMALS}, ("validate", "config.yaml"), 3,
         ("animals.csv", "not found")),
    Case("wrong-target-column-validate", {"animals.csv": ANIMALS_CSV, "config.yaml": ANIMALS},
         ("validate", "config.yaml", "--set", "data.target=species"), 3, ("animals.csv", "species")),
]
MESSAGE_CASES += [
    Case("units-vs-outputs-regression", {"config.yaml": config_text(
        data={"source": "synthetic", "dataset": "sine", "samples": 40}, loss={"type": "mse"})},
         ("validate", "config.yaml"), 2, ("config.yaml", "model.layers.1.units", "expected 1", "target column")),
    Case("validate-prints-resolved-defaults", {"animals.csv": ANIMALS_CSV, "config.yaml": ANIMALS},
         ("validate", "config.yaml", "--set", "model.layers.1.units=3"), 0, ("9 training",),
         stdout_words=("init: glorot_uniform", "- weight", "- height")),
    Case("resume-fewer-epochs", {"run": crafted_run(lambda state: None, epochs=3)},
         ("train", "--resume", "run", "--set", "training.epochs=2"), 2,
         ("run/config.yaml", "training.epochs", "expected at least 3", "received 2")),
    Case("resume-fewer-epochs-config-file", {"run": crafted_run(lambda state: None, epochs=3),
                                             "again.yaml": config_text(training__epochs=2)},
         ("train", "--resume", "run", "again.yaml"), 2, ("again.yaml", "training.epochs", "expected at least 3")),
]

# ---------------------------------------------------------------- item 14: sweeps
MESSAGE_CASES += [
    Case("sweep-diverged-member", {"config.yaml": config_text(model__layers__0__activation="relu")},
         ("train", "config.yaml", "--sweep", "optimizer.learning_rate=0.1,1e30", "--plot", "{tmp}/c.png", *RUNS), 5,
         ("diverged", "learning_rate-1e30"), writes=True),
    Case("sweep-failed-member", {"config.yaml": config_text()},
         ("train", "config.yaml", "--sweep", "model.layers.0.units=4,0", "--plot", "{tmp}/c.png", *RUNS), 2,
         ("failed", "model.layers.0.units"), writes=True),
]
