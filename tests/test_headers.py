"""Header rules: hop-by-hop filtering, forwarded headers, Location rewriting, Host parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from certproxy.proxy.headers import client_response_headers, end_to_end, upstream_request_headers
from certproxy.proxy.hostname import origin, parse_host, valid_host
from certproxy.service.plain import redirect_target


def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped() -> None:
    headers = [
        (b"Host", b"reg.example.com"), (b"Connection", b"keep-alive, X-Secret-Hop"),
        (b"Keep-Alive", b"timeout=5"), (b"Proxy-Authorization", b"Basic xx"),
        (b"Proxy-Foo", b"1"), (b"TE", b"trailers"), (b"Trailer", b"X"),
        (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"), (b"x-secret-hop", b"1"),
        (b"Accept", b"a"), (b"Accept", b"b"), (b"Docker-Content-Digest", b"sha256:00"),
    ]
    assert end_to_end(headers) == [
        (b"Host", b"reg.example.com"), (b"Accept", b"a"), (b"Accept", b"b"),
        (b"Docker-Content-Digest", b"sha256:00"),
    ]


def test_the_verdicts_remembered_per_name_are_bounded_and_stay_right() -> None:
    """end_to_end remembers what it decided for each header name; a client sending
    thousands of distinct or long names cannot make that memory grow past its bound,
    and a remembered name gets the same verdict as a fresh one."""
    from certproxy.proxy import headers as module

    many = [(b"X-N%d" % i, b"v") for i in range(5000)] + [(b"X-" + b"l" * 5000, b"v")]
    assert end_to_end(many) == many
    assert all(len(memo) <= module._MEMO_MAX for memo in module._memo.values())
    assert all(len(name) <= module._MEMO_NAME_MAX for memo in module._memo.values() for name in memo)
    hop = [(b"Proxy-Foo", b"1"), (b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"Accept", b"a")]
    assert end_to_end(hop) == end_to_end(hop) == [(b"Accept", b"a")]
    assert upstream_request_headers(hop, client_ip=b"192.0.2.1", host=None, listener_port=5000)[0] == \
        (b"Accept", b"a")


def test_repeated_headers_keep_their_order_and_case() -> None:
    headers = [(b"Accept", b"application/vnd.oci.image.manifest.v1+json"),
               (b"Authorization", b"Bearer t"),
               (b"accept", b"application/vnd.docker.distribution.manifest.v2+json")]
    assert end_to_end(headers) == headers


def test_forwarded_headers_come_from_the_connection_not_the_client() -> None:
    headers = [(b"Host", b"reg.example.com:5000"), (b"X-Forwarded-For", b"6.6.6.6"),
               (b"X-Real-IP", b"6.6.6.6"), (b"X-Forwarded-Proto", b"http"),
               (b"X-Forwarded-Host", b"evil"), (b"Forwarded", b"for=6.6.6.6"), (b"Range", b"bytes=0-9")]
    out = upstream_request_headers(headers, client_ip=b"192.0.2.7", host=b"reg.example.com:5000",
                                   listener_port=5000)
    assert out == [
        (b"Host", b"reg.example.com:5000"), (b"Range", b"bytes=0-9"),
        (b"X-Forwarded-For", b"192.0.2.7"), (b"X-Real-IP", b"192.0.2.7"),
        (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"reg.example.com:5000"),
        (b"X-Forwarded-Port", b"5000"),
    ]


def test_location_pointing_at_the_upstream_is_rewritten_others_are_not() -> None:
    up = b"http://registry:5000"
    rewrite = lambda loc: client_response_headers(  # noqa: E731
        [(b"Location", loc)], upstream_url=up, public_origin=lambda: b"https://reg.example.com:5000")[0][1]
    assert rewrite(b"http://registry:5000/v2/x/blobs/uploads/u?_state=s") == \
        b"https://reg.example.com:5000/v2/x/blobs/uploads/u?_state=s"
    assert rewrite(b"https://reg.example.com:5000/v2/") == b"https://reg.example.com:5000/v2/"
    assert rewrite(b"http://registry:50001/x") == b"http://registry:50001/x"
    assert rewrite(b"/v2/relative") == b"/v2/relative"


@pytest.mark.parametrize("value, parsed", [
    ("reg.example.com", ("reg.example.com", None)),
    ("Reg.Example.com:5000", ("reg.example.com", 5000)),
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[::1]:8443", ("[::1]", 8443)),
    ("[::1]", ("[::1]", None)),
    ("", None), (None, None), ("a b", None), ("evil.com/x", None), ("a:99999", None),
    ("a:", None), ("[::1", None), ("[zz]:1", None), ("a:1:2", None), ("user@host", None),
    ("a..b", None), ("-a", None),
])
def test_parse_host(value: str | None, parsed: tuple[str, int | None] | None) -> None:
    assert parse_host(value) == parsed


def test_redirect_keeps_path_and_query_and_names_non_default_ports() -> None:
    assert redirect_target("reg.example.com", "/v2/?a=1&b=%2F", 443) == \
        "https://reg.example.com/v2/?a=1&b=%2F"
    assert redirect_target("reg.example.com:80", "/x", 5000) == "https://reg.example.com:5000/x"
    assert redirect_target("bad host", "/x", 443) is None
    assert origin("https", "h", 443) == "https://h"


@given(st.one_of(
    st.text(alphabet="abcXYZ019.-_:[]@ /%", max_size=40),
    st.from_regex(r"\[[0-9a-f:.]{0,40}\](:[0-9]{0,6})?", fullmatch=True),
    st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{0,6})?", fullmatch=True),
))
def test_the_fast_host_check_agrees_with_parse_host(value: str) -> None:
    assert valid_host(value.encode()) == (parse_host(value) is not None), value


def test_connection_never_removes_what_frames_a_message_or_what_certproxy_sets() -> None:
    from certproxy.proxy.headers import NominationRefused

    response = [(b"Connection", b"Content-Length, Strict-Transport-Security, X-Hop"),
                (b"Content-Length", b"5"), (b"Strict-Transport-Security", b"max-age=1"), (b"X-Hop", b"1")]
    assert end_to_end(response) == [(b"Content-Length", b"5"), (b"Strict-Transport-Security", b"max-age=1")]
    for named in (b"Content-Length", b"transfer-encoding", b"HOST"):
        request = [(b"Host", b"reg"), (b"Connection", b"keep-alive, " + named), (b"Content-Length", b"5")]
        with pytest.raises(NominationRefused) as refused:
            upstream_request_headers(request, client_ip=b"192.0.2.1", host=b"reg", listener_port=5000)
        assert refused.value.name == named.lower()
    request = [(b"Host", b"reg"), (b"Connection", b"X-Forwarded-For, X-Real-IP, X-Hop"), (b"X-Hop", b"1")]
    out = upstream_request_headers(request, client_ip=b"192.0.2.1", host=b"reg", listener_port=5000)
    assert (b"X-Forwarded-For", b"192.0.2.1") in out and (b"X-Real-IP", b"192.0.2.1") in out
    assert (b"X-Hop", b"1") not in out


def test_certproxy_own_answers_carry_the_date() -> None:
    """An origin with a clock sends Date (RFC 9110 6.6.1); clients compare it with theirs."""
    import email.utils
    import time

    from certproxy.proxy.wire import own_response

    head = own_response(401, b"{}\n", [(b"WWW-Authenticate", b"Bearer realm=x")]).split(b"\r\n\r\n")[0]
    dates = [line[6:] for line in head.split(b"\r\n") if line.lower().startswith(b"date: ")]
    assert len(dates) == 1
    sent = email.utils.parsedate_to_datetime(dates[0].decode()).timestamp()
    assert abs(sent - time.time()) < 5 and dates[0].endswith(b" GMT")
