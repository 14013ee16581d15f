"""Unit and property tests for kube_audit_rest.review (pure functions, no I/O)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kube_audit_rest.review import (
    DEFAULT_API_VERSION,
    TIMESTAMP_KEY,
    InvalidReview,
    Review,
    build_response,
    compact,
    format_timestamp,
    parse_review,
    render_record,
)

UID = "705ab4f5-6393-11e8-b7cc-42010a800002"
V1_BODY = (
    b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",'
    b'"request":{"uid":"' + UID.encode() + b'","kind":{"group":"","version":"v1","kind":"Pod"},'
    b'"operation":"CREATE","object":{"metadata":{"name":"p"}}}}'
)
V1BETA1_BODY = (
    b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1",'
    b'"request":{"uid":"' + UID.encode() + b'","operation":"DELETE"}}'
)
# 2023-11-14T22:13:20.123456789Z
NS = 1_700_000_000_123_456_789
STAMP = "2023-11-14T22:13:20.123456789Z"
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _review(uid: str = UID, api_version: str = DEFAULT_API_VERSION) -> Review:
    return Review(uid=uid, api_version=api_version, has_timestamp_key=False)


def _strict_loads(data: bytes) -> Any:
    """The RFC 8259 oracle: the stdlib decoder minus NaN/Infinity."""

    def reject(name: str) -> Any:
        raise ValueError(name)

    return json.loads(data.decode("utf-8"), parse_constant=reject, parse_int=float)


# --------------------------------------------------------------------------- parse_review


def test_parse_valid_v1() -> None:
    review = parse_review(V1_BODY)
    assert review == Review(uid=UID, api_version="admission.k8s.io/v1", has_timestamp_key=False)


def test_parse_valid_v1beta1() -> None:
    review = parse_review(V1BETA1_BODY)
    assert review.uid == UID
    assert review.api_version == "admission.k8s.io/v1beta1"
    assert review.has_timestamp_key is False


def test_parse_pretty_printed_body() -> None:
    body = json.dumps(json.loads(V1_BODY), indent=4).encode()
    assert parse_review(body) == parse_review(V1_BODY)


@pytest.mark.parametrize(
    "body",
    [
        b'{"request":{"uid":"u"}}',
        b'{"apiVersion":"","request":{"uid":"u"}}',
        b'{"apiVersion":null,"request":{"uid":"u"}}',
        b'{"apiVersion":7,"request":{"uid":"u"}}',
        b'{"apiVersion":["admission.k8s.io/v1beta1"],"request":{"uid":"u"}}',
    ],
)
def test_api_version_defaults_to_v1(body: bytes) -> None:
    assert parse_review(body).api_version == DEFAULT_API_VERSION == "admission.k8s.io/v1"


def test_api_version_is_echoed_verbatim() -> None:
    body = b'{"apiVersion":"example.com/v9","request":{"uid":"u"}}'
    assert parse_review(body).api_version == "example.com/v9"


def test_has_timestamp_key_only_at_top_level() -> None:
    nested = b'{"request":{"uid":"u","requestReceivedTimestamp":"x"}}'
    top = b'{"request":{"uid":"u"},"requestReceivedTimestamp":"x"}'
    escaped = b'{"request":{"uid":"u"},"request\\u0052eceivedTimestamp":1}'
    assert parse_review(nested).has_timestamp_key is False
    assert parse_review(top).has_timestamp_key is True
    assert parse_review(escaped).has_timestamp_key is True


def test_uid_escapes_are_decoded() -> None:
    body = b'{"request":{"uid":"a\\u00e9\\"b\\\\c\\ud83d\\ude00"}}'
    assert parse_review(body).uid == 'a\u00e9"b\\c\U0001f600'


@pytest.mark.parametrize(
    "body",
    [
        b'{"request":{"uid":"u"},"n":1e999}',
        b'{"request":{"uid":"u"},"n":-1E+999}',
        b'{"request":{"uid":"u"},"n":1' + b"0" * 400 + b"}",
        # Longer than the stdlib's 4300-digit int conversion limit: still RFC 8259.
        b'{"request":{"uid":"u"},"n":1' + b"0" * 5000 + b"}",
        b'{"request":{"uid":"u"},"n":-' + b"9" * 5000 + b".5e-3}",
    ],
    ids=["1e999", "-1E+999", "400-digit-int", "5000-digit-int", "5000-digit-float"],
)
def test_numbers_overflowing_a_double_are_accepted(body: bytes) -> None:
    assert parse_review(body).uid == "u"


@pytest.mark.parametrize(
    ("body", "uid"),
    [
        (b'{"request":{"uid":"\\ud800"}}', "\ud800"),
        (b'{"request":{"uid":"u"},"s":"\\udc00\\ud800"}', "u"),
        (b'{"request":{"uid":"u"},"\\ud800":1}', "u"),
    ],
)
def test_lone_surrogate_escapes_are_accepted(body: bytes, uid: str) -> None:
    assert parse_review(body).uid == uid


def test_nesting_within_limits_is_accepted() -> None:
    body = b'{"request":{"uid":"u"},"x":' + b"[" * 500 + b"]" * 500 + b"}"
    assert parse_review(body).uid == "u"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "empty"),
        (b"[]", "body must be a JSON object"),
        (b'"request"', "body must be a JSON object"),
        (b"null", "body must be a JSON object"),
        (b"42", "body must be a JSON object"),
        (b'[{"request":{"uid":"u"}}]', "body must be a JSON object"),
        (b"{}", "request must be a JSON object"),
        (b'{"request":null}', "request must be a JSON object"),
        (b'{"request":"uid"}', "request must be a JSON object"),
        (b'{"request":[{"uid":"u"}]}', "request must be a JSON object"),
        (b'{"uid":"u"}', "request must be a JSON object"),
        (b'{"request":{}}', "request.uid must be a non-empty string"),
        (b'{"request":{"uid":""}}', "request.uid must be a non-empty string"),
        (b'{"request":{"uid":null}}', "request.uid must be a non-empty string"),
        (b'{"request":{"uid":42}}', "request.uid must be a non-empty string"),
        (b'{"request":{"uid":["u"]}}', "request.uid must be a non-empty string"),
        (b'{"request":{"uid":{"u":1}}}', "request.uid must be a non-empty string"),
        (b'{"request":{"uid":true}}', "request.uid must be a non-empty string"),
        (b'{"request":{"UID":"u"}}', "request.uid must be a non-empty string"),
        (b'{"request":{"uid":"u"},"n":NaN}', "not valid JSON"),
        (b'{"request":{"uid":"u"},"n":Infinity}', "not valid JSON"),
        (b'{"request":{"uid":"u"},"n":-Infinity}', "not valid JSON"),
        (b"NaN", "not valid JSON"),
        (b'{"request":{"uid":"u"}} x', "not valid JSON"),
        (b'{"request":{"uid":"u"}}{}', "not valid JSON"),
        (b'{"request":{"uid":"u"}}\x00', "not valid JSON"),
        (b'{"request":{"uid":"u"},}', "not valid JSON"),
        (b"{'request':{'uid':'u'}}", "not valid JSON"),
        (b'{"request":{"uid":"u\x01"}}', "not valid JSON"),
        (b'{"request":{"uid":"u\tv"}}', "not valid JSON"),
        (b'{"request":{"uid":"u"},"n":01}', "not valid JSON"),
        (b'{"request":{"uid":"u"},"n":+1}', "not valid JSON"),
        (b'{"request":{"uid":"u"},"n":.5}', "not valid JSON"),
        (b'{"request":{"uid":"u"},"n":0x10}', "not valid JSON"),
        (b'{"request":{"uid":"u"},"s":"\\x41"}', "not valid JSON"),
        (b'{"request":{"uid":"u"}', "not valid JSON"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
        (b" \t\r\n ", "not valid JSON"),
        (b'{"request":{"uid":"\xff"}}', "not valid UTF-8"),
        (b'{"request":{"uid":"\xc3"}}', "not valid UTF-8"),
        # A surrogate encoded as raw UTF-8 bytes is not UTF-8 (unlike the escape).
        (b'{"request":{"uid":"\xed\xa0\x80"}}', "not valid UTF-8"),
        (b'{"request":{"uid":"\xc0\xaf"}}', "not valid UTF-8"),
        (b"[" * 5000, "too deep"),
        (b"[" * 5000 + b"]" * 5000, "too deep"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "too deep"),
        (b'{"request":{"uid":"u"},"x":' + b"[" * 3000 + b"]" * 3000 + b"}", "too deep"),
    ],
    ids=lambda value: value[:24] if isinstance(value, bytes) else value,
)
def test_rejections_name_the_problem(body: bytes, expected: str) -> None:
    with pytest.raises(InvalidReview) as caught:
        parse_review(body)
    assert expected in str(caught.value)
    assert isinstance(caught.value, ValueError)


# --------------------------------------------------------------------------- compact


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{}", b"{}"),
        (b" { } ", b"{}"),
        (b'{ "a" : 1 , "b" : [ 1 , 2 ] }', b'{"a":1,"b":[1,2]}'),
        (b'{\n\t"a":\r\n\t\t[true,\n false, null]\n}\n', b'{"a":[true,false,null]}'),
        (b'{"a b": " c  d ", "e":"\\t\\n"}', b'{"a b":" c  d ","e":"\\t\\n"}'),
        (b'["\\u003c\\u003E\\u0026", "\\/"]', b'["\\u003c\\u003E\\u0026","\\/"]'),
        (b'[ "say \\"hi there\\" ", "x" ]', b'["say \\"hi there\\" ","x"]'),
        (b'[ "back\\\\", " spaced " ]', b'["back\\\\"," spaced "]'),
        (b'[ "\\\\\\" ", 1 ]', b'["\\\\\\" ",1]'),
        (b"[ 1.0E+2, -0, 0.000, 1e-7, -1.50 ]", b"[1.0E+2,-0,0.000,1e-7,-1.50]"),
        (b'{ "a": 1, "a": 2, "a" : "3" }', b'{"a":1,"a":2,"a":"3"}'),
        (
            b'{"k": "\xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x98\x80"}',
            b'{"k":"\xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x98\x80"}',
        ),
        (b'[ "\\ud800 ", 1 ]', b'["\\ud800 ",1]'),
        (b'{"nospace":"at all"}', b'{"nospace":"at all"}'),
        (b'[""  ,  " "  ,  "  "]', b'[""," ","  "]'),
    ],
)
def test_compact(body: bytes, expected: bytes) -> None:
    assert compact(body) == expected


def test_compact_does_not_decode_or_reencode() -> None:
    body = V1_BODY.replace(b",", b" ,\n  ").replace(b":", b" :\t")
    assert compact(body) == V1_BODY


# --------------------------------------------------------------------------- format_timestamp


@pytest.mark.parametrize(
    ("epoch_ns", "expected"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1, "1970-01-01T00:00:00.000000001Z"),
        (100_000_000, "1970-01-01T00:00:00.1Z"),
        (120_000_000, "1970-01-01T00:00:00.12Z"),
        (123_000_000, "1970-01-01T00:00:00.123Z"),
        (123_456_789, "1970-01-01T00:00:00.123456789Z"),
        (999_999_999, "1970-01-01T00:00:00.999999999Z"),
        (1_000_000_000, "1970-01-01T00:00:01Z"),
        (1_136_214_245_000_000_000, "2006-01-02T15:04:05Z"),
        (1_136_214_245_000_001_000, "2006-01-02T15:04:05.000001Z"),
        (NS, STAMP),
        (951_782_400_500_000_000, "2000-02-29T00:00:00.5Z"),
        (4_102_444_799_999_999_999, "2099-12-31T23:59:59.999999999Z"),
    ],
)
def test_format_timestamp(epoch_ns: int, expected: str) -> None:
    assert format_timestamp(epoch_ns) == expected


def test_format_timestamp_is_utc_whatever_the_local_zone() -> None:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        assert format_timestamp(0) == "1970-01-01T00:00:00Z"
        assert format_timestamp(NS) == STAMP
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))
@PROPERTY_SETTINGS
def test_format_timestamp_matches_datetime(epoch_ns: int) -> None:
    text = format_timestamp(epoch_ns)
    seconds, nanos = divmod(epoch_ns, 10**9)
    assert text.endswith("Z")
    head, _, fraction = text[:-1].partition(".")
    expected_head = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert head == expected_head
    assert not fraction.endswith("0")
    assert len(fraction) <= 9
    assert int(fraction.ljust(9, "0") or "0") == nanos


# --------------------------------------------------------------------------- render_record


def test_render_appends_timestamp_last() -> None:
    body = b'{ "apiVersion": "admission.k8s.io/v1",\n  "request": { "uid": "u" } }\n'
    record = render_record(body, parse_review(body), NS)
    assert record == (
        b'{"apiVersion":"admission.k8s.io/v1","request":{"uid":"u"},'
        b'"requestReceivedTimestamp":"' + STAMP.encode() + b'"}\n'
    )
    assert record.endswith(b"}\n")
    assert record.count(b"\n") == 1
    assert list(json.loads(record))[-1] == TIMESTAMP_KEY


def test_render_object_with_only_request() -> None:
    body = b'{"request":{"uid":"u"}}'
    record = render_record(body, parse_review(body), 0)
    assert record == b'{"request":{"uid":"u"},"requestReceivedTimestamp":"1970-01-01T00:00:00Z"}\n'


def test_render_empty_object_gets_no_stray_comma() -> None:
    # parse_review never accepts "{}", but render_record must still not emit "{,".
    review = Review(uid="u", api_version=DEFAULT_API_VERSION, has_timestamp_key=False)
    assert render_record(b" { } ", review, 0) == (
        b'{"requestReceivedTimestamp":"1970-01-01T00:00:00Z"}\n'
    )


def test_render_replaces_existing_top_level_timestamp_in_place() -> None:
    body = (
        b'{"requestReceivedTimestamp": "1999-01-01T00:00:00Z", '
        b'"request": {"uid": "u", "requestReceivedTimestamp": "nested stays"}, '
        b'"z": 1}'
    )
    record = render_record(body, parse_review(body), NS)
    stamp = b'"' + STAMP.encode() + b'"'
    assert record == (
        b'{"requestReceivedTimestamp":' + stamp + b","
        b'"request":{"uid":"u","requestReceivedTimestamp":"nested stays"},"z":1}\n'
    )


def test_render_replaces_every_duplicate_and_any_value_shape() -> None:
    body = (
        b'{"requestReceivedTimestamp":"old",'
        b'"a":"requestReceivedTimestamp",'
        b'"request":{"uid":"u"},'
        b'"requestReceivedTimestamp":{"x":[1,{"y":"}]"}],"requestReceivedTimestamp":2},'
        b'"arr":[{"requestReceivedTimestamp":3},"requestReceivedTimestamp"],'
        b'"request\\u0052eceivedTimestamp":[[],{}],'
        b'"requestReceivedTimestamp":null}'
    )
    record = render_record(body, parse_review(body), NS)
    s = b'"' + STAMP.encode() + b'"'
    assert record == (
        b'{"requestReceivedTimestamp":' + s + b","
        b'"a":"requestReceivedTimestamp",'
        b'"request":{"uid":"u"},'
        b'"requestReceivedTimestamp":' + s + b","
        b'"arr":[{"requestReceivedTimestamp":3},"requestReceivedTimestamp"],'
        b'"request\\u0052eceivedTimestamp":' + s + b","
        b'"requestReceivedTimestamp":' + s + b"}\n"
    )


def test_render_nested_timestamp_is_left_alone_and_appended_at_top() -> None:
    body = (
        b'{"request":{"uid":"u","requestReceivedTimestamp":"keep"},'
        b'"o":{"requestReceivedTimestamp":1}}'
    )
    record = render_record(body, parse_review(body), 0)
    assert record == (body[:-1] + b',"requestReceivedTimestamp":"1970-01-01T00:00:00Z"}\n')


def test_render_keeps_bytes_of_strings_and_numbers() -> None:
    body = (
        b'{ "request" : { "uid" : "u" } , "s" : "\\u003c a \\"b\\" \\\\ \\ud800 \xc3\xa9" ,'
        b' "n" : [ 1.0E+2 , -0 , 1e999 ] , "d" : 1 , "d" : 2 }'
    )
    record = render_record(body, parse_review(body), 0)
    assert record == (
        b'{"request":{"uid":"u"},"s":"\\u003c a \\"b\\" \\\\ \\ud800 \xc3\xa9",'
        b'"n":[1.0E+2,-0,1e999],"d":1,"d":2,'
        b'"requestReceivedTimestamp":"1970-01-01T00:00:00Z"}\n'
    )


# --------------------------------------------------------------------------- build_response


def test_build_response_v1_exact_bytes() -> None:
    assert build_response(parse_review(V1_BODY)) == (
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
        b'"response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}'
    )


def test_build_response_v1beta1_exact_bytes() -> None:
    assert build_response(parse_review(V1BETA1_BODY)) == (
        b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview",'
        b'"response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}'
    )


def test_build_response_default_api_version() -> None:
    body = b'{"request":{"uid":"u"}}'
    assert build_response(parse_review(body)) == (
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
        b'"response":{"uid":"u","allowed":true}}'
    )


def test_build_response_does_not_html_escape() -> None:
    response = build_response(_review(uid='<a>&"b"\\'))
    assert b'"uid":"<a>&\\"b\\"\\\\"' in response
    assert b"\\u003c" not in response
    assert json.loads(response)["response"]["uid"] == '<a>&"b"\\'


def test_build_response_non_ascii_uid() -> None:
    response = build_response(_review(uid="\u00e9\U0001f600"))
    assert json.loads(response)["response"]["uid"] == "\u00e9\U0001f600"
    assert response.decode("utf-8")


@pytest.mark.parametrize("uid", ["\ud800", "a\udfffb", "<\udc00>&"])
def test_build_response_lone_surrogate_uid_is_valid_json(uid: str) -> None:
    body = b'{"request":{"uid":' + json.dumps(uid).encode() + b"}}"
    review = parse_review(body)
    assert review.uid == uid
    response = build_response(review)
    text = response.decode("ascii")  # ASCII, so certainly valid UTF-8
    document = json.loads(text)
    assert document == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True},
    }
    assert list(document) == ["apiVersion", "kind", "response"]
    assert "<" not in uid or "<" in text


def test_build_response_lone_surrogate_api_version() -> None:
    response = build_response(_review(uid="u", api_version="v\ud800"))
    assert json.loads(response.decode("ascii"))["apiVersion"] == "v\ud800"


# --------------------------------------------------------------------------- properties

_KEYS = st.one_of(
    st.sampled_from([TIMESTAMP_KEY, "request", "uid", "a b", "", "\\", '"']),
    st.text(max_size=8),
)
_JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)
_WHITESPACE = st.text(alphabet=" \t\n\r", max_size=3)


@st.composite
def _dump_options(draw: st.DrawFn) -> dict[str, Any]:
    options: dict[str, Any] = {"ensure_ascii": draw(st.booleans())}
    style = draw(st.sampled_from(["indent", "indent-str", "separators", "default"]))
    if style == "indent":
        options["indent"] = draw(st.integers(min_value=0, max_value=4))
    elif style == "indent-str":
        options["indent"] = draw(_WHITESPACE)
    if style in ("separators", "indent-str") or draw(st.booleans()):
        item = draw(_WHITESPACE) + "," + draw(_WHITESPACE)
        key = draw(_WHITESPACE) + ":" + draw(_WHITESPACE)
        options["separators"] = (item, key)
    return options


def _dump(document: Any, options: dict[str, Any], lead: str = "", trail: str = "") -> bytes:
    return (lead + json.dumps(document, **options) + trail).encode("utf-8")


def _strip_appended_stamp(record: bytes, epoch_ns: int) -> bytes:
    tail = b',"requestReceivedTimestamp":"' + format_timestamp(epoch_ns).encode() + b'"}\n'
    assert record.endswith(tail)
    return record[: -len(tail)]


@given(
    uid=st.text(min_size=1),
    value=_JSON_VALUES,
    options=_dump_options(),
    lead=_WHITESPACE,
    trail=_WHITESPACE,
    epoch_ns=st.integers(min_value=0, max_value=4_102_444_800 * 10**9),
)
@PROPERTY_SETTINGS
def test_render_equals_canonical_compact_form(
    uid: str, value: Any, options: dict[str, Any], lead: str, trail: str, epoch_ns: int
) -> None:
    document = {"request": {"uid": uid}, "x": value}
    body = _dump(document, options, lead, trail)
    review = parse_review(body)
    assert review.uid == uid
    assert review.has_timestamp_key is False
    record = render_record(body, review, epoch_ns)
    canonical = json.dumps(document, separators=(",", ":"), ensure_ascii=options["ensure_ascii"])
    assert _strip_appended_stamp(record, epoch_ns) == canonical.encode("utf-8")[:-1]
    assert compact(body) == canonical.encode("utf-8")
    decoded = json.loads(record)
    assert decoded[TIMESTAMP_KEY] == format_timestamp(epoch_ns)
    assert record.count(b"\n") == 1


@given(
    uid=st.text(min_size=1),
    members=st.lists(st.tuples(_KEYS, _JSON_VALUES), max_size=4),
    old=_JSON_VALUES,
    position=st.integers(min_value=0, max_value=5),
    options=_dump_options(),
    epoch_ns=st.integers(min_value=0, max_value=4_102_444_800 * 10**9),
)
@PROPERTY_SETTINGS
def test_render_replaces_existing_timestamp_like_canonical_form(
    uid: str,
    members: list[tuple[str, Any]],
    old: Any,
    position: int,
    options: dict[str, Any],
    epoch_ns: int,
) -> None:
    items: list[tuple[str, Any]] = [("request", {"uid": uid})]
    items += [(k, v) for k, v in members if k not in ("request", TIMESTAMP_KEY)]
    items.insert(min(position, len(items)), (TIMESTAMP_KEY, old))
    document = dict(items)
    body = _dump(document, options)
    review = parse_review(body)
    assert review.has_timestamp_key is True
    record = render_record(body, review, epoch_ns)
    document[TIMESTAMP_KEY] = format_timestamp(epoch_ns)  # same position in the dict
    expected = json.dumps(document, separators=(",", ":"), ensure_ascii=options["ensure_ascii"])
    assert record == expected.encode("utf-8") + b"\n"


@given(st.binary(max_size=200))
@PROPERTY_SETTINGS
def test_arbitrary_binary_only_raises_invalid_review(data: bytes) -> None:
    try:
        _strict_loads(data)
    except (ValueError, RecursionError):
        valid = False
    else:
        valid = True
    assume(not valid)
    with pytest.raises(InvalidReview):
        parse_review(data)


_JSONISH_CHARS = st.text(
    alphabet='{}[]":,0123456789.eE+-truefalsnNIity \\u\n\xe9\ud800', max_size=60
)
# Grammar-level tokens, so that nearly-valid and valid documents come up often.
_JSON_TOKENS = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", " ", "\n", "\t",
        '"request"', '"uid"', '"u"', '""', '"\\ud800"', '"\\u00e9"', '"\\"', '"\\x"',
        "0", "-0", "01", "1.5", "1.", ".5", "1e999", "-1E+2", "1" + "0" * 400,
        "true", "false", "null", "NaN", "Infinity", "-Infinity", "nul",
    ]
)  # fmt: skip
_ENVELOPES = st.sampled_from(
    [
        ("", ""),
        ('{"request":{"uid":"u', '"}}'),
        ('{"request":{"uid":', "}}"),
        ('{"request":', "}"),
        ('{"request":{"uid":"u"},"x":', "}"),
    ]
)


@st.composite
def _json_like(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        middle = draw(_JSONISH_CHARS)
    else:
        middle = "".join(draw(st.lists(_JSON_TOKENS, max_size=12)))
    head, tail = draw(_ENVELOPES)
    return (head + middle + tail).encode("utf-8", "surrogatepass")


@given(_json_like())
@PROPERTY_SETTINGS
def test_json_like_input_agrees_with_strict_oracle(data: bytes) -> None:
    try:
        document = _strict_loads(data)
    except (ValueError, RecursionError):
        with pytest.raises(InvalidReview):
            parse_review(data)
        return
    request = document.get("request") if isinstance(document, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if isinstance(uid, str) and uid:
        assert parse_review(data).uid == uid
    else:
        with pytest.raises(InvalidReview):
            parse_review(data)
