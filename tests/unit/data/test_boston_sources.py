"""Boston housing: every source layout renders to the one canonical CSV, and bad tables are refused.

The table comes from the offline mirror where there is one (and must then hash to
``boston.SHA256``); a seeded synthetic 506-row table with the same column precisions runs the
same checks everywhere. From it the tests write the layouts real sources serve: StatLib's text
(free-text preamble, each record wrapped 11 + 3 values, trailing zeros) and an OpenML-like CSV
(quoted lowercase header, another column order, BOM, CRLF).
"""

from __future__ import annotations

import csv
import hashlib
import io
import random

import numpy as np
import pytest

from bplab.data import boston
from bplab.data.boston import BostonDownload, BostonSource
from bplab.data.fetch import MIRROR_ENV
from bplab.errors import DataError, DownloadError
from bplab.testing.scratch import data_mirror
from support.processes import unavailable

COLUMNS = list(boston.COLUMNS)

# Read before any test's monkeypatch clears BPLAB_DATA_MIRROR: the real offline mirror, if any.
_MIRROR = data_mirror()
MIRROR_CSV = _MIRROR / "boston" / "boston.csv" if _MIRROR is not None else None

# Decimals StatLib prints per column (``0.00632  18.00   2.310  0  0.5380 ...``); 0: an integer.
STATLIB_DECIMALS = {"CRIM": 5, "ZN": 2, "INDUS": 3, "CHAS": 0, "NOX": 4, "RM": 4, "AGE": 2, "DIS": 4,
                    "RAD": 0, "TAX": 1, "PTRATIO": 2, "B": 2, "LSTAT": 2, "MEDV": 2}

STATLIB_PREAMBLE = """\
 The Boston house-price data of Harrison, D. and Rubinfeld, D.L. 'Hedonic
 prices and the demand for clean air', J. Environ. Economics & Management,
 vol.5, 81-102, 1978.   Used in Belsley, Kuh & Welsch, 'Regression diagnostics
 ...', Wiley, 1980.   N.B. Various transformations are used in the table on
 pages 244-261 of the latter.

 Variables in order:
 CRIM     per capita crime rate by town
 ZN       proportion of residential land zoned for lots over
                 25,000 sq.ft.
 INDUS    proportion of non-retail business acres per town
 CHAS     Charles River dummy variable (= 1 if tract bounds river; 0 otherwise)
 NOX      nitric oxides concentration (parts per 10 million)
 RM       average number of rooms per dwelling
 AGE      proportion of owner-occupied units built prior to 1940
 DIS      weighted distances to five Boston employment centres
 RAD      index of accessibility to radial highways
 TAX      full-value property-tax rate per $10,000
 PTRATIO  pupil-teacher ratio by town
 B        1000(Bk - 0.63)^2 where Bk is the proportion of blacks by town
 LSTAT    % lower status of the population
 MEDV     Median value of owner-occupied homes in $1000's
"""


# --- tables and the layouts sources serve them in ------------------------------------------------


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def synthetic_rows(seed: int = 7) -> list[list[str]]:
    """506 rows of plausible values with StatLib's precision per column, as canonical strings."""
    rng = random.Random(seed)
    ranges = {"CRIM": (0.006, 89), "ZN": (0, 100), "INDUS": (0.4, 28), "NOX": (0.38, 0.88), "RM": (3.5, 8.8),
              "AGE": (2.9, 100), "DIS": (1.1, 12.2), "TAX": (187, 711), "PTRATIO": (12.6, 22), "B": (0.3, 396.9),
              "LSTAT": (1.7, 38), "MEDV": (5, 50)}
    decimals = {**STATLIB_DECIMALS, "ZN": 1, "INDUS": 2, "RM": 3, "AGE": 1, "TAX": 0, "PTRATIO": 1, "MEDV": 1}
    rows = []
    for _ in range(boston.N_ROWS):
        row = []
        for column in COLUMNS:
            if column == "CHAS":
                value = float(rng.random() < 0.07)
            elif column == "RAD":
                value = float(rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 24]))
            else:
                low, high = ranges[column]
                value = round(rng.uniform(low, high), decimals[column])
            row.append(boston._number(str(value)))
        rows.append(row)
    return rows


def mirror_rows() -> list[list[str]]:
    return list(csv.reader(io.StringIO(MIRROR_CSV.read_text())))[1:]


@pytest.fixture(params=["synthetic", "mirror"])
def table(request) -> tuple[list[list[str]], bytes]:
    """(rows as canonical strings, the canonical CSV bytes they must render to)."""
    if request.param == "synthetic":
        rows = synthetic_rows()
        return rows, boston.render_csv(rows)
    if MIRROR_CSV is None or not MIRROR_CSV.is_file():
        unavailable("no offline data mirror with boston/boston.csv")
    canonical = MIRROR_CSV.read_bytes()
    assert sha256(canonical) == boston.SHA256
    return mirror_rows(), canonical


def statlib_value(text: str, column: str) -> str:
    """``text`` with StatLib's trailing zeros: ``18`` -> ``18.00``, ``2.31`` -> ``2.310``."""
    decimals = STATLIB_DECIMALS[column]
    whole, _, fraction = text.partition(".")
    assert len(fraction) <= decimals or (decimals == 0 and fraction == ""), (column, text)
    return whole if decimals == 0 else f"{whole}.{fraction.ljust(decimals, '0')}"


def statlib_text(rows: list[list[str]]) -> bytes:
    """StatLib's layout: the preamble, then each record over two lines (11 values, then 3)."""
    widths = [8, 7, 7, 3, 7, 7, 7, 8, 4, 7, 7, 7, 7, 7]
    lines = STATLIB_PREAMBLE.splitlines()
    for row in rows:
        cells = [statlib_value(v, c).rjust(w) for v, c, w in zip(row, COLUMNS, widths, strict=True)]
        lines.append("".join(cells[:11]))
        lines.append("      " + "".join(cells[11:]))
    return ("\n".join(lines) + "\n").encode("latin-1")


def openml_csv(rows: list[list[str]], drop: str | None = None) -> bytes:
    """OpenML-like CSV: BOM, quoted lowercase header, MEDV first then the rest reversed, CRLF, ``18.0``."""
    order = [COLUMNS.index("MEDV"), *reversed(range(len(COLUMNS) - 1))]
    order = [i for i in order if COLUMNS[i] != drop]
    lines = [",".join(f'"{COLUMNS[i].lower()}"' for i in order)]
    for row in rows:
        cells = [f'"{int(float(row[i]))}"' if COLUMNS[i] == "CHAS" else repr(float(row[i])) for i in order]
        lines.append(",".join(cells))
    return ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")


def plain_csv(rows: list[list[str]], columns: list[str] = COLUMNS) -> bytes:
    return ("\n".join([",".join(columns), *(",".join(r) for r in rows)]) + "\n").encode()


@pytest.fixture(autouse=True)
def _no_local_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set BPLAB_DATA_MIRROR themselves; a value from the caller's shell must not leak in."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)


# --- the normalisers ----------------------------------------------------------------------------


def test_mirror_csv_is_already_canonical():
    if MIRROR_CSV is None or not MIRROR_CSV.is_file():
        unavailable("no offline data mirror with boston/boston.csv")

    rendered = boston.from_csv(MIRROR_CSV.read_bytes())

    assert sha256(rendered) == boston.SHA256
    assert rendered == MIRROR_CSV.read_bytes()


def test_canonical_form_writes_shortest_numbers_without_trailing_zeros():
    row = ["0.00632", "18.00", "2.310", "0", "0.5380", "6.5750", "65.20", "4.0900", "1", "296.0", "15.30",
           "396.90", "4.98", "24.00"]

    rendered = boston.render_csv([row]).decode()

    assert rendered == (",".join(COLUMNS) + "\n"
                        "0.00632,18,2.31,0,0.538,6.575,65.2,4.09,1,296,15.3,396.9,4.98,24\n")


def test_statlib_text_renders_to_the_canonical_csv(table):
    rows, canonical = table
    text = statlib_text(rows)
    records = text.decode("latin-1").splitlines()[len(STATLIB_PREAMBLE.splitlines()):]
    assert [len(line.split()) for line in records[:4]] == [11, 3, 11, 3]
    assert records[0].split()[-1].endswith("0")  # PTRATIO with StatLib's trailing zero

    assert boston.from_statlib(text) == canonical


def test_openml_csv_renders_to_the_canonical_csv(table):
    rows, canonical = table

    assert boston.from_csv(openml_csv(rows)) == canonical


def test_csv_missing_a_column_names_it():
    with pytest.raises(ValueError, match=r"lacks column\(s\) PTRATIO"):
        boston.from_csv(openml_csv(synthetic_rows(), drop="PTRATIO"))


def test_csv_with_a_non_numeric_cell_names_row_and_column():
    rows = synthetic_rows()
    rows[6][COLUMNS.index("TAX")] = "n/a"

    with pytest.raises(ValueError, match=r"row 7, column TAX: 'n/a' is not a number"):
        boston.from_csv(plain_csv(rows))


@pytest.mark.parametrize("count", [boston.N_ROWS - 1, boston.N_ROWS + 1])
def test_csv_with_wrong_row_count_is_refused(count):
    rows = (synthetic_rows() * 2)[:count]

    with pytest.raises(ValueError, match=rf"expected 506 rows, found {count}"):
        boston.from_csv(plain_csv(rows))


def test_csv_row_with_a_missing_cell_names_the_row():
    rows = synthetic_rows()
    rows[9] = rows[9][:-1]  # MEDV left out of row 10

    with pytest.raises(ValueError, match=r"row 10"):
        boston.from_csv(plain_csv(rows))


def test_empty_csv_is_refused():
    with pytest.raises(ValueError, match="empty"):
        boston.from_csv(b"")


def test_statlib_text_with_a_missing_value_is_refused():
    lines = statlib_text(synthetic_rows()).decode("latin-1").splitlines()
    last = len(lines) - 1
    lines[last] = lines[last].rsplit(maxsplit=1)[0]  # the last record loses MEDV

    with pytest.raises(ValueError, match=r"expected 7084 numbers, found 7083"):
        boston.from_statlib("\n".join(lines).encode("latin-1"))


def test_statlib_parser_refuses_a_csv():
    with pytest.raises(ValueError, match="StatLib text"):
        boston.from_statlib(plain_csv(synthetic_rows()))


# --- boston.download over HTTP --------------------------------------------------------------------


def boston_params(*sources: tuple[str, str], retries: int = 2) -> BostonDownload:
    return BostonDownload(sources=[BostonSource(url=url, format=fmt) for url, fmt in sources],
                          retries=retries, backoff_s=0.01, timeout_s=5)


def test_download_statlib_source_writes_the_canonical_csv(table, http_server, tmp_path):
    rows, canonical = table
    url = http_server.put("datasets/boston", statlib_text(rows))
    raw_dir = tmp_path / "raw"

    [fetched] = boston.download(raw_dir, boston_params((url, "statlib")), sha256=sha256(canonical))

    assert (raw_dir / "boston.csv").read_bytes() == canonical
    assert (fetched.name, fetched.path, fetched.source) == ("boston.csv", raw_dir / "boston.csv", url)
    assert (fetched.sha256, fetched.size) == (sha256(canonical), len(canonical))
    assert sorted(p.name for p in raw_dir.iterdir()) == ["boston.csv"]
    features, target = boston.read_table(raw_dir / "boston.csv")
    assert features.shape == (506, 13) and target.shape == (506,)


def test_download_default_checksum_accepts_the_real_table(http_server, tmp_path):
    if MIRROR_CSV is None or not MIRROR_CSV.is_file():
        unavailable("no offline data mirror with boston/boston.csv")
    url = http_server.put("datasets/boston", statlib_text(mirror_rows()))

    boston.download(tmp_path, boston_params((url, "statlib")))

    assert sha256((tmp_path / "boston.csv").read_bytes()) == boston.SHA256


def test_source_in_the_wrong_format_falls_over_to_the_next(http_server, tmp_path):
    rows = synthetic_rows()
    canonical = boston.render_csv(rows)
    csv_as_statlib = http_server.put("mislabelled.csv", plain_csv(rows))
    statlib_as_csv = http_server.put("mislabelled.txt", statlib_text(rows))
    good = http_server.put("openml.csv", openml_csv(rows))
    params = boston_params((csv_as_statlib, "statlib"), (statlib_as_csv, "csv"), (good, "csv"))

    [fetched] = boston.download(tmp_path, params, sha256=sha256(canonical))

    assert fetched.source == good
    assert (tmp_path / "boston.csv").read_bytes() == canonical
    assert http_server.count("mislabelled.csv") == 1 and http_server.count("mislabelled.txt") == 1


def test_download_with_every_source_failing_names_them_and_writes_nothing(http_server, tmp_path):
    rows = synthetic_rows()
    rows[0][0] = "x"
    bad = http_server.put("bad.csv", plain_csv(rows))
    missing = http_server.url("missing.csv")

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()

    with pytest.raises(DownloadError) as caught:
        boston.download(raw_dir, boston_params((bad, "csv"), (missing, "statlib")),
                        sha256=sha256(boston.render_csv(synthetic_rows())))

    message = str(caught.value)
    assert f"{bad}: CSV: row 1, column CRIM" in message
    assert f"{missing}: HTTP 404" in message
    assert MIRROR_ENV in message
    assert list(raw_dir.iterdir()) == []  # neither boston.csv nor a .part temp file


def test_local_mirror_is_tried_first(http_server, tmp_path, monkeypatch):
    rows = synthetic_rows()
    canonical = boston.render_csv(rows)
    (tmp_path / "mirror" / "boston").mkdir(parents=True)
    (tmp_path / "mirror" / "boston" / "boston.csv").write_bytes(canonical)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    params = boston_params((http_server.url("boston"), "statlib"))

    [fetched] = boston.download(tmp_path / "raw", params, sha256=sha256(canonical))

    assert fetched.source == str(tmp_path / "mirror" / "boston" / "boston.csv")
    assert (tmp_path / "raw" / "boston.csv").read_bytes() == canonical
    assert http_server.requests == []


# --- read_table -----------------------------------------------------------------------------------


def test_read_table_returns_features_and_target(tmp_path):
    rows = synthetic_rows()
    path = tmp_path / "boston.csv"
    path.write_bytes(boston.render_csv(rows))

    features, target = boston.read_table(path)

    assert features.shape == (506, 13) and target.shape == (506,)
    assert features[3, COLUMNS.index("TAX")] == float(rows[3][COLUMNS.index("TAX")])
    assert target[-1] == float(rows[-1][-1])


def test_read_table_with_a_missing_column_names_file_and_header(tmp_path):
    path = tmp_path / "boston.csv"
    keep = [c for c in COLUMNS if c != "B"]
    rows = [[v for v, c in zip(r, COLUMNS, strict=True) if c != "B"] for r in synthetic_rows()]
    path.write_bytes(plain_csv(rows, keep))

    with pytest.raises(DataError) as caught:
        boston.read_table(path)

    message = str(caught.value)
    assert str(path) in message
    assert f"header must be {','.join(COLUMNS)}, found {','.join(keep)}" in message


def test_read_table_with_a_non_numeric_cell_names_file_line_and_column(tmp_path):
    rows = synthetic_rows()
    rows[2][COLUMNS.index("NOX")] = "?"
    path = tmp_path / "boston.csv"
    path.write_bytes(plain_csv(rows))

    with pytest.raises(DataError, match=r"line 4, column NOX: '\?' is not a number") as caught:
        boston.read_table(path)

    assert str(path) in str(caught.value)


def test_read_table_with_a_short_line_names_file_and_line(tmp_path):
    rows = synthetic_rows()
    rows[0] = rows[0][:-1]
    path = tmp_path / "boston.csv"
    path.write_bytes(plain_csv(rows))

    with pytest.raises(DataError, match=r"line 2 has 13 values, expected 14") as caught:
        boston.read_table(path)

    assert str(path) in str(caught.value)


def test_read_table_on_a_missing_file_says_to_download_first(tmp_path):
    with pytest.raises(DataError, match="run the download stage first"):
        boston.read_table(tmp_path / "boston.csv")


def test_a_split_that_leaves_under_two_test_rows_is_refused_naming_the_key(tmp_path):
    from bplab.data.boston import BostonPreprocess
    from bplab.errors import ParamsError

    (tmp_path / "boston.csv").write_bytes(boston.render_csv(synthetic_rows()))
    with pytest.raises(ParamsError, match=r"data.boston.preprocess.test_size: 0.001 leaves 505 training and 1 test"):
        boston.preprocess(tmp_path, BostonPreprocess(test_size=0.001))
    assert len(boston.preprocess(tmp_path, BostonPreprocess(test_size=0.004)).splits["test"][0]) == 3


def test_validation_rows_are_carved_before_the_scaler_is_fitted(tmp_path):
    from bplab.data.boston import BostonPreprocess
    from bplab.errors import ParamsError

    (tmp_path / "boston.csv").write_bytes(boston.render_csv(synthetic_rows()))
    prepared = boston.preprocess(tmp_path, BostonPreprocess())
    sizes = {split: len(x) for split, (x, _) in prepared.splits.items()}
    assert sizes == {"train": 364, "val": 40, "test": 102}
    assert prepared.transform["validation"] == {"val_size": 0.1, "val_seed": 0, "n_train": 364, "n_val": 40}
    # The scaler saw the 364 training rows only: they come out centred, the validation rows do not.
    assert abs(prepared.splits["train"][0].astype(np.float64).mean(axis=0)).max() < 1e-5
    assert abs(prepared.splits["val"][0].mean(axis=0)).max() > 0.01
    with pytest.raises(ParamsError, match=r"data.boston.preprocess.val_size: 0.001 of 404 training rows leaves "
                                          r"404 to train on and 0 to validate on; each needs at least 2"):
        boston.preprocess(tmp_path, BostonPreprocess(val_size=0.001))
