"""The one JSON reader: what torchhefl writes reads back; each rule refuses by name, and nothing but
``MalformedMessageError`` comes out, however large or deep the text."""

import json
import random
import re
import sys
from pathlib import Path

import pytest

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import strict_json
from torchhefl.secure.strict_json import MAX_DEPTH, MAX_INT_DIGITS, loads


def test_reads_what_json_dumps_writes():
    doc = {
        "kind": "fit_res",
        "meta": {"round": 3, "loss": -0.125, "tiny": 5e-324, "big": 1.7976931348623157e308, "seed": 2**64 - 1},
        "names": ["w", "é", "😀", "[{\"not\": structure}]"],
        "arrays": [{"shape": [1, 30], "flag": True, "none": None}],
        "nested": [[[[[[[[1]]]]]]]],
    }
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    assert loads(text.encode()) == doc == loads(text)
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) == json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert loads("9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    assert float(loads("-" + "9" * MAX_INT_DIGITS)) > -float("inf")  # every accepted integer is a finite float


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1" * (MAX_INT_DIGITS + 1), f"an integer of {MAX_INT_DIGITS + 1} digits \\(at most {MAX_INT_DIGITS}\\)"),
        ('{"round": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
        ("[-" + "9" * 4301 + "]", "an integer of 4301 digits"),
        ("NaN", "NaN is not a number JSON allows"),
        ('{"loss": Infinity}', "Infinity is not a number JSON allows"),
        ("[-Infinity]", "-Infinity is not a number JSON allows"),
        ("1e400", "the number '1e400' is beyond the float range"),
        ("[-1E+309]", "the number '-1E\\+309' is beyond the float range"),
        ('{"round": 1, "round": 2}', "key 'round' appears twice in one object"),
        ('{"a": {"b": 1, "c": 2, "b": 3}}', "key 'b' appears twice"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested {MAX_DEPTH + 1} deep, more than {MAX_DEPTH}"),
        ('{"a":' * 70 + "0" + "}" * 70, "nested 70 deep"),
        ('"\\ud800"', "a string holds a lone surrogate"),
        ('{"\\udfff": 1}', "a string holds a lone surrogate"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("{not json", "Expecting property name"),
        ('"unterminated \\', "Unterminated string"),
    ],
)
def test_each_rule_refuses_by_name(text, reason):
    with pytest.raises(MalformedMessageError, match=f"^message header is not valid JSON: {reason}"):
        loads(text, what="message header")


def test_sixteen_megabytes_of_brackets_neither_recurse_nor_raise_recursion_error():
    limit = sys.getrecursionlimit()
    for raw in (b"[" * (16 << 20), b"{" * (16 << 20), b'{"a":' * (3 << 20)):
        with pytest.raises(MalformedMessageError, match="nested .* deep"):
            loads(raw)
    assert sys.getrecursionlimit() == limit


def test_brackets_inside_strings_are_not_structure():
    """Depth counts the document's own brackets: not those in strings (escaped quotes included), and
    an unterminated string hides nothing."""
    assert loads(json.dumps({"name": "[" * 1000, "other": '\\"' + "{" * 1000})) == {"name": "[" * 1000, "other": '\\"' + "{" * 1000}
    with pytest.raises(MalformedMessageError, match="Unterminated string"):
        loads('["' + '\\"' * 100_000 + "[" * 1000)
    with pytest.raises(MalformedMessageError, match="nested 1001 deep"):
        loads('["a\\\\"' + "," + "[" * 1000)  # the string ends at its third quote: the brackets count


def test_random_text_gives_only_malformed_message_errors():
    rng = random.Random(0)
    alphabet = '[]{}":,0123456789.eE+-\\ untrufalsNIinfy\x00\xe9'
    tried = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))
        tried += 1
        try:
            loads(text)
        except MalformedMessageError:
            pass
    assert tried == 3000


def test_the_library_reads_json_only_through_this_module():
    """Every JSON reader of the library is this one (``json.loads`` appears nowhere else)."""
    root = Path(strict_json.__file__).parents[1]
    readers = sorted(p.relative_to(root.parent).as_posix() for p in root.rglob("*.py") if re.search(r"\bjson\.loads?\(", p.read_text(encoding="utf-8")))
    assert readers == ["torchhefl/secure/strict_json.py"]
