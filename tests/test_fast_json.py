"""The orjson fast paths (annotation loading, output lines) give exactly the stdlib's results."""
import json
import math

import pytest

from spa_common.errors import SpaError
from spa_common.jsonio import read_json
from spa_data.subsets import _dumps

pytest.importorskip("orjson")   # without it both paths ARE the stdlib


def _stdlib(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("value", [
    0.0, -0.0, 1.0, 0.1, 123.45000000000002, 639.9999999999999,
    1e-4, 9.9e-5, 1e-5, 5e-6, 2.5e-7, 1.000001e-6, 10.00001, 1e15, 1e16, 1.5e16, 1e22,
    2 ** 63 - 1, 2 ** 64, -(2 ** 70),
    "000000391895.jpg", "é 漢字 \U0001F600", "tab\tnew\nline\x01\x7f\u2028\"\\/", "\ud800",
])
def test_dumps_matches_stdlib(value):
    obj = {"image_id": 1, "box": [value, 2.0], "file": value, "mask": None, "ratio": value}
    assert _dumps(obj) == _stdlib(obj)


def test_dumps_matches_stdlib_on_random_floats():
    values = [m * 10.0 ** e for e in range(-9, 18) for m in (1.0, 1.5, 3.14159, 9.999999)]
    values += [round(v, 6) for v in values]
    for v in values:
        obj = {"ratio": v, "box": [v, -v]}
        assert _dumps(obj) == _stdlib(obj), v


@pytest.mark.parametrize("text", [
    '{"a": [1, 2.5, -0, 1e400, NaN], "b": "x"}',   # stdlib extensions orjson rejects
    '{"big": 18446744073709551615, "small": -9223372036854775808}',   # 64-bit limits (see read_json)
    '\ufeff{"bom": true}',
    '{"a": 1, "a": 2}',
    '{"s": "\\ud800"}',
])
def test_read_json_matches_stdlib(tmp_path, text):
    path = tmp_path / "x.json"
    path.write_text(text, encoding="utf-8")
    got = read_json(path)
    want = json.loads(path.read_bytes())
    assert json.dumps(got) == json.dumps(want)
    if "NaN" in text:
        assert math.isnan(got["a"][4]) and got["a"][3] == math.inf


def test_read_json_malformed_message_is_stdlib(tmp_path):
    path = tmp_path / "instances_val2017.json"
    path.write_text('{"images": [1, 2,', encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as stdlib_error:
        json.loads(path.read_bytes())
    with pytest.raises(SpaError) as e:
        read_json(path)
    assert str(e.value) == f"{path}: malformed JSON ({stdlib_error.value})"
