"""Input-table rows (issue 11) for reading data and configs right: labels, scaling, types, bounded reads, CSV."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
from input_table import Case, config_text

RUN = ("--runs-dir", "{tmp}/runs")


def csv_config(target: str = "y", units: int = 2, loss: str = "cross_entropy", path: str = "d.csv", **data) -> str:
    """A tiny config training on a CSV file in the row's folder."""
    return config_text(data={"source": "csv", "path": path, "target": target, "validation": 0, **data},
                       model__layers__1__units=units, loss={"type": loss}, training__batch__size=4)


def npz_config(**data) -> str:
    return config_text(data={"source": "npz", "path": "d.npz", "validation": 0, **data})


def rows(labels: list[str], header: str = "a,b,y") -> str:
    """One row per label, features varying with the row so nothing is constant."""
    return header + "\n" + "".join(f"{i % 7},{i % 5 + 0.5},{label}\n" for i, label in enumerate(labels))


def npz(x: np.ndarray, y: np.ndarray):
    return lambda path: np.savez(path, x=x, y=y)


def npz_declaring(shape: tuple[int, ...]):
    """An .npz whose x.npy header declares `shape` of float64 but holds no data (a few hundred bytes)."""
    def make(path: Path) -> None:
        head = io.BytesIO()
        np.lib.format.write_array_header_2_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
        y = io.BytesIO()
        np.save(y, np.zeros(shape[0] if shape[0] < 10 else 4, np.int64))
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", head.getvalue())
            archive.writestr("y.npy", y.getvalue())
    return make


def idx_header(dims: tuple[int, ...], payload: bytes = b"") -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def idx_config(images: str, labels: str) -> str:
    return config_text(data={"source": "idx", "train_images": images, "train_labels": labels},
                       model__layers__1__units=10)


GOOD_LABELS = idx_header((4,), bytes([0, 1, 0, 1]))
# line 5000 of 6001 holds the byte 0xff: beyond any first read buffer of a reader
DEEP_BAD_BYTE = (rows(["p", "q"] * 2499) + "1,\xff2,p\n" + rows(["p", "q"] * 500, header="")[1:]).encode(
    "utf-8").replace(b"\xc3\xbf", b"\xff")

DATA_CASES: list[Case] = [
    # ---- 1. labels: the sorted distinct labels are the classes 0..C-1
    Case("labels 1/2 train binary_cross_entropy", {"c.yaml": csv_config(units=1, loss="binary_cross_entropy"),
                                                  "d.csv": rows(["1", "2"] * 10)},
         ("train", "c.yaml", *RUN), 0, writes=True, stdout_words=("runs",)),
    Case("labels 5/7 need 2 output units", {"c.yaml": csv_config(units=2), "d.csv": rows(["5", "7"] * 10)},
         ("train", "c.yaml", *RUN), 0, writes=True),
    Case("labels 5/7 refuse 8 output units", {"c.yaml": csv_config(units=8), "d.csv": rows(["5", "7"] * 10)},
         ("train", "c.yaml", *RUN), 2, ("model.layers.1.units", "expected 2", "received 8")),
    Case("labels 1 and 1.0 are one class", {"c.yaml": csv_config(units=2), "d.csv": rows(["1", "1.0", "2", "02"] * 5)},
         ("train", "c.yaml", *RUN), 0, writes=True),
    Case("string labels with spaces are one class", {"c.yaml": csv_config(units=2),
                                                     "d.csv": rows(["cat", " cat", "dog ", "dog"] * 5)},
         ("train", "c.yaml", *RUN), 0, writes=True),
    Case("single-class csv target", {"c.yaml": csv_config(), "d.csv": rows(["ok"] * 10)},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "single class", "'ok'")),
    Case("single-class csv target spelled two ways", {"c.yaml": csv_config(), "d.csv": rows(["3", "3.0"] * 5)},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "single class", "'3'")),
    Case("npz float labels", {"c.yaml": npz_config(), "d.npz": npz(np.arange(40.0).reshape(20, 2),
                                                                    np.array([1.0, 2.0] * 10))},
         ("train", "c.yaml", *RUN), 0, writes=True),
    Case("npz labels 5/7", {"c.yaml": npz_config(), "d.npz": npz(np.arange(40.0).reshape(20, 2), np.array([5, 7] * 10))},
         ("train", "c.yaml", *RUN), 0, writes=True),
    Case("single-class npz target", {"c.yaml": npz_config(), "d.npz": npz(np.arange(40.0).reshape(20, 2),
                                                                          np.full(20, 4))},
         ("train", "c.yaml", *RUN), 3, ("d.npz", "single class", "'4'")),
    Case("npz nan label", {"c.yaml": npz_config(), "d.npz": npz(np.arange(8.0).reshape(4, 2),
                                                                np.array([0.0, 1.0, np.nan, 1.0]))},
         ("train", "c.yaml", *RUN), 3, ("d.npz", "sample 2", "expected a class label", "nan")),
    Case("single-class idx labels", {"c.yaml": idx_config("i.idx", "l.idx"), "i.idx": idx_header((4, 2, 2), bytes(16)),
                                     "l.idx": idx_header((4,), bytes([3, 3, 3, 3]))},
         ("train", "c.yaml", *RUN), 3, ("l.idx", "every label is '3'")),
    # ---- 3. the target among the features, a feature twice
    Case("target among features", {"c.yaml": csv_config(features=["a", "y"]), "d.csv": rows(["p", "q"] * 5)},
         ("validate", "c.yaml"), 2, ("c.yaml", "data.features", "target column 'y'")),
    Case("feature listed twice", {"c.yaml": csv_config(features=["a", "b", "a"]), "d.csv": rows(["p", "q"] * 5)},
         ("validate", "c.yaml"), 2, ("c.yaml", "data.features", "'a' more than once")),
    Case("target among features via --set", {"c.yaml": csv_config(), "d.csv": rows(["p", "q"] * 5)},
         ("train", "c.yaml", "--set", "data.features=[y, b]", *RUN), 2, ("data.features", "target column 'y'")),
    # ---- 5. strict types
    Case("epochs true", {"c.yaml": config_text(training__epochs=True)}, ("validate", "c.yaml"), 2,
         ("training.epochs", "valid integer", "True")),
    Case("epochs quoted", {"c.yaml": config_text(training__epochs="3")}, ("validate", "c.yaml"), 2,
         ("training.epochs", "valid integer", "'3'")),
    Case("epochs 3.0", {"c.yaml": config_text(training__epochs=3.0)}, ("validate", "c.yaml"), 2,
         ("training.epochs", "valid integer", "3.0")),
    Case("units true", {"c.yaml": config_text(model__layers__0__units=True)}, ("validate", "c.yaml"), 2,
         ("model.layers.0.units", "valid integer")),
    Case("learning_rate true", {"c.yaml": config_text(optimizer__learning_rate=True)}, ("validate", "c.yaml"), 2,
         ("optimizer.learning_rate", "valid number", "True")),
    Case("learning_rate quoted", {"c.yaml": config_text(optimizer__learning_rate="0.1")}, ("validate", "c.yaml"), 2,
         ("optimizer.learning_rate", "valid number", "'0.1'")),
    Case("shuffle no is a string", {"c.yaml": config_text().replace("  epochs: 4\n", "  epochs: 4\n  shuffle: no\n")},
         ("validate", "c.yaml"), 2,
         ("training.shuffle", "valid boolean", "'no'")),
    Case("shuffle 1 is not a boolean", {"c.yaml": config_text()}, ("validate", "c.yaml", "--set", "training.shuffle=1"),
         2, ("training.shuffle", "valid boolean")),
    Case("nesterov as a string", {"c.yaml": config_text()}, ("validate", "c.yaml", "--set", "optimizer.nesterov=yes"),
         2, ("optimizer.nesterov", "valid boolean", "'yes'")),
    Case("seed true", {"c.yaml": config_text(seed=True)}, ("validate", "c.yaml"), 2, ("seed", "valid integer")),
    Case("samples as a float", {"c.yaml": config_text(data__samples=100.0)}, ("validate", "c.yaml"), 2,
         ("data.samples", "valid integer")),
    Case("objective start as strings", {"c.yaml": "name: o\nobjective: {type: valley, start: ['1', 2]}\n"
                                                  "optimizer: {type: sgd, learning_rate: 0.1}\ntraining: {steps: 3}\n"},
         ("validate", "c.yaml"), 2, ("objective.start.0", "valid number")),
    Case("validation split hides a class", {"c.yaml": csv_config(validation=0.6),
                                            "d.csv": rows(["p", "q"] * 6 + ["rare"])},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "class 'rare'", "data.validation 0.6")),
    # ---- 7. reads bounded by what is declared
    Case("dev zero as the config", {}, ("validate", "/dev/zero"), 2, ("/dev/zero", "at most 1000000 bytes")),
    Case("dev zero as a csv", {"c.yaml": csv_config(path="/dev/zero")}, ("train", "c.yaml", *RUN), 3,
         ("/dev/zero", "a device")),
    Case("dev zero as an npz", {"c.yaml": config_text(data={"source": "npz", "path": "/dev/zero"})},
         ("train", "c.yaml", *RUN), 3, ("/dev/zero", "a device")),
    Case("dev zero as idx images", {"c.yaml": idx_config("/dev/zero", "l.idx"), "l.idx": GOOD_LABELS},
         ("train", "c.yaml", *RUN), 3, ("/dev/zero", "a device")),
    Case("npz header declares terabytes", {"c.yaml": npz_config(), "d.npz": npz_declaring((1_000_000, 1_000_000))},
         ("train", "c.yaml", *RUN), 3, ("d.npz", "x: the header declares shape (1000000, 1000000)", "8.0 TB")),
    Case("idx gz header declares terabytes", {
        "c.yaml": idx_config("i.gz", "l.idx"), "l.idx": GOOD_LABELS,
        "i.gz": gzip.compress(idx_header((60000, 10000, 10000), bytes(64)))},
         ("train", "c.yaml", *RUN), 3, ("i.gz", "60000x10000x10000", "36.0 TB of memory")),
    Case("idx raw header declares terabytes", {
        "c.yaml": idx_config("i.idx", "l.idx"), "l.idx": GOOD_LABELS,
        "i.idx": idx_header((60000, 10000, 10000), bytes(64))},
         ("train", "c.yaml", *RUN), 3, ("i.idx", "TB of memory")),
    # ---- 6 (data side). tracebacks
    Case("npz x with zero rows", {"c.yaml": npz_config(), "d.npz": npz(np.zeros((0, 3)), np.zeros(0, np.int64))},
         ("train", "c.yaml", *RUN), 3, ("d.npz", "at least one sample", "(0, 3)")),
    Case("npz x with zero features", {"c.yaml": npz_config(), "d.npz": npz(np.zeros((4, 0)), np.arange(4) % 2)},
         ("train", "c.yaml", *RUN), 3, ("d.npz", "one feature", "(4, 0)")),
    Case("npz y scalar", {"c.yaml": npz_config(), "d.npz": npz(np.zeros((4, 2)), np.array(1))},
         ("train", "c.yaml", *RUN), 3, ("d.npz", "y has shape ()")),
    Case("npz y with zero columns", {"c.yaml": config_text(data={"source": "npz", "path": "d.npz", "validation": 0},
                                                          loss={"type": "mse"}, model__layers__1__units=1),
                                     "d.npz": npz(np.zeros((4, 2)), np.zeros((4, 0)))},
         ("train", "c.yaml", *RUN), 3, ("d.npz", "at least one target", "(4, 0)")),
    # ---- 8. the CSV reader keeps every check
    Case("csv with BOM and CRLF", {"c.yaml": csv_config(), "d.csv": b"\xef\xbb\xbf" + rows(["p", "q"] * 5).replace(
        "\n", "\r\n").encode()}, ("train", "c.yaml", *RUN), 0, writes=True),
    Case("csv quoted fields and blank lines", {"c.yaml": csv_config(),
                                               "d.csv": '"a","b","y"\n"1","2.5",p\n\n   \n3,"4",q\n5,6,"p"\n7,8,q\n'},
         ("train", "c.yaml", *RUN), 0, writes=True),
    Case("csv empty cell", {"c.yaml": csv_config(), "d.csv": "a,b,y\n1,2,p\n3,,q\n"}, ("train", "c.yaml", *RUN), 3,
         ("d.csv", "row 3, column 'b': empty cell")),
    Case("csv NA cell", {"c.yaml": csv_config(), "d.csv": "a,b,y\n1,2,p\nNA,4,q\n"}, ("train", "c.yaml", *RUN), 3,
         ("d.csv", "row 3, column 'a': expected a number, received 'NA'")),
    Case("csv empty quoted cell", {"c.yaml": csv_config(), "d.csv": 'a,b,y\n1,2,p\n3,"",q\n'},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 3, column 'b': empty cell")),
    Case("csv too few cells", {"c.yaml": csv_config(), "d.csv": "a,b,y\n1,2,p\n3,4\n5,6,q\n"},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 3: expected 3 cells like the header, received 2")),
    Case("csv empty target", {"c.yaml": csv_config(), "d.csv": "a,b,y\n1,2,p\n3,4, \n"},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 3, column 'y': empty target cell")),
    Case("csv regression target NA", {"c.yaml": csv_config(units=1, loss="mse"), "d.csv": "a,b,y\n1,2,0.5\n3,4,NA\n"},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 3, column 'y'", "'NA'")),
    Case("csv hex number", {"c.yaml": csv_config(), "d.csv": "a,b,y\n1,0x10,p\n3,4,q\n"},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 2, column 'b': expected a number, received '0x10'")),
    Case("csv non-UTF-8 byte deep in the file", {"c.yaml": csv_config(),
                                                 "d.csv": DEEP_BAD_BYTE},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 5000", "not utf-8", "0xff")),
    Case("csv non-UTF-8 byte in a label", {"c.yaml": csv_config(), "d.csv": b"a,b,y\n1,2,p\n3,4,caf\xe9\n5,6,q\n"},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 3", "not utf-8", "0xe9")),
    Case("csv NA label", {"c.yaml": csv_config(), "d.csv": "a,b,y\n1,2,p\n3,4,q\n5,6,NA\n"},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 4", "expected a class label", "'NA'")),
    Case("csv nan label", {"c.yaml": csv_config(), "d.csv": "a,b,y\n1,2,1\n3,4,2\n5,6,nan\n"},
         ("train", "c.yaml", *RUN), 3, ("d.csv", "row 4", "expected a class label", "'nan'")),
    Case("csv header name with a line break", {"c.yaml": csv_config(features=["a\nb", "c"]),
                                               "d.csv": '"a\nb",c,y\n' + rows(["p", "q"] * 4, header="")[1:]},
         ("train", "c.yaml", *RUN), 0, writes=True),
    Case("csv header only without a line end", {"c.yaml": csv_config(), "d.csv": "a,b,y"}, ("train", "c.yaml", *RUN),
         3, ("d.csv", "no data rows after the header")),
    Case("csv label not seen in training", {"c.yaml": csv_config(validation_file="v.csv"),
                                            "d.csv": rows(["p", "q"] * 5), "v.csv": rows(["p", "q", "p", "zz"])},
         ("train", "c.yaml", *RUN), 3, ("v.csv", "row 5", "class label 'zz' was not seen in training")),
]
