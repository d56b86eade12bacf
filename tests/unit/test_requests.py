"""Requests rebuilt from syscalls (diag/analyze/requests.py), on small synthetic strace streams:
what a request is (end of its first read to end of its last write), keep-alive, connections older
than the trace, partial and pipelined reads, upstream sockets, and the family a call counts in."""
from __future__ import annotations

import os
import random
import sys

import pytest

from diag.analyze.requests import family_of, rebuild
from diag.syscalls import FdKind

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "rules"))
from synth import MS, PID, call, sock  # noqa: E402

LISTENER = 3


def test_request_runs_from_the_end_of_its_read_to_the_end_of_its_last_write():
    # GIVEN an accepted connection whose read blocks 2-5 ms (the client is slow to send: idle
    # time), then a response written in two parts, then close
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER),
              sock("read", 2, 3, ret=100),
              sock("write", 6, 1, ret=150),
              sock("write", 8, 1, ret=50),
              sock("close", 10, 0.1)]
    # WHEN requests are rebuilt
    rs = rebuild(events)
    # THEN one request: from the end of the read to the end of the last write, with its bytes
    assert len(rs.requests) == 1
    r = rs.requests[0]
    assert (r.pid, r.tid, r.fd) == (PID, 10, 5)
    assert (r.start_ns, r.end_ns) == (5 * MS, 9 * MS)
    assert (r.bytes_in, r.bytes_out, r.reads, r.writes) == (100, 200, 1, 2)
    assert r.first_write_ns == 7 * MS           # time to first byte: the end of the first write
    assert r.conn_start_ns == 1 * MS            # the end of the accept
    assert r.seq == 0 and r.write_tid is None and r.family_ns is None and r.source == "strace"
    assert rs.connections == 1 and rs.inflight == 0


def test_keep_alive_connection_gives_one_request_per_exchange_numbered_in_order():
    # GIVEN one connection serving three request/response exchanges
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER)]
    for k in range(3):
        t = 10 + 10 * k
        events += [sock("read", t, 1, ret=80), sock("write", t + 2, 1, ret=300)]
    # WHEN requests are rebuilt
    rs = rebuild(events)
    # THEN three requests on the one connection, seq 0, 1, 2, each ending at its own write
    assert [r.seq for r in rs.requests] == [0, 1, 2]
    assert [(r.start_ns, r.end_ns) for r in rs.requests] == [(11 * MS, 13 * MS), (21 * MS, 23 * MS),
                                                             (31 * MS, 33 * MS)]
    assert {r.conn_start_ns for r in rs.requests} == {1 * MS}
    assert rs.connections == 1


def test_recvfrom_and_sendto_are_reads_and_writes_too():
    events = [sock("accept", 0, 1, ret=6, fd=LISTENER),
              sock("recvfrom", 2, 1, ret=40, fd=6),
              sock("sendto", 4, 1, ret=90, fd=6)]
    rs = rebuild(events)
    assert [(r.fd, r.bytes_in, r.bytes_out, r.end_ns) for r in rs.requests] == [(6, 40, 90, 5 * MS)]


def test_connection_already_open_when_the_trace_began_still_gives_requests():
    # GIVEN reads and writes on a socket whose accept the trace never saw
    events = [sock("read", 2, 1, ret=100), sock("write", 4, 1, ret=100),
              sock("read", 10, 1, ret=100), sock("write", 12, 1, ret=100)]
    # WHEN requests are rebuilt
    rs = rebuild(events)
    # THEN both requests are there, numbered from the first one seen, without an accept time
    assert [r.seq for r in rs.requests] == [0, 1]
    assert all(r.conn_start_ns is None for r in rs.requests)
    assert rs.connections == 1


def test_partial_reads_before_the_response_are_one_request_starting_at_the_first():
    # GIVEN a request that arrives in two reads (60 then 40 bytes) before its response
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER),
              sock("read", 2, 1, ret=60), sock("read", 4, 1, ret=40),
              sock("write", 6, 1, ret=10)]
    rs = rebuild(events)
    # THEN one request of two reads, starting when the first bytes came in
    [r] = rs.requests
    assert (r.reads, r.bytes_in, r.start_ns, r.end_ns) == (2, 100, 3 * MS, 7 * MS)


def test_pipelined_requests_are_merged_as_documented():
    # GIVEN a client that sends request 2 before the server answered request 1: read 1, read 2,
    # write 1, write 2 (the documented limit: pipelined requests merge into one)
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER),
              sock("read", 2, 1, ret=50), sock("read", 4, 1, ret=50),
              sock("write", 6, 1, ret=20), sock("write", 8, 1, ret=20)]
    rs = rebuild(events)
    # THEN one request carrying both reads and both writes
    [r] = rs.requests
    assert (r.reads, r.writes, r.bytes_in, r.bytes_out) == (2, 2, 100, 40)
    assert (r.start_ns, r.end_ns) == (3 * MS, 9 * MS)


def test_errors_and_eof_move_no_bytes_and_eof_ends_the_connection():
    # GIVEN a non-blocking server: a read failing with EAGAIN before the request's bytes, a
    # response, then EOF (read returning 0) and a later close
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER),
              sock("read", 2, 0.1, ret=-1),                  # EAGAIN
              sock("read", 4, 1, ret=100),
              sock("write", 6, 1, ret=100),
              sock("read", 20, 1, ret=0),                    # EOF
              sock("close", 22, 0.1)]
    rs = rebuild(events)
    # THEN the request starts at the read that moved bytes, and ends at its write, not at the EOF
    [r] = rs.requests
    assert (r.start_ns, r.end_ns, r.reads) == (5 * MS, 7 * MS, 1)
    assert rs.inflight == 0


def test_writes_before_any_read_are_no_response_and_unanswered_reads_are_inflight():
    # GIVEN a server greeting written before the client sent anything, then a request the trace
    # ended before it was answered
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER),
              sock("write", 2, 1, ret=30),                   # greeting: no request open
              sock("read", 4, 1, ret=100)]
    rs = rebuild(events)
    # THEN no request is complete; one was in flight at the end
    assert rs.requests == []
    assert rs.inflight == 1


def test_a_response_written_by_another_thread_names_the_writer():
    # GIVEN a worker hand-off: thread 10 reads the request, thread 11 writes the response
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER, tid=10),
              sock("read", 2, 1, ret=100, tid=10),
              sock("write", 6, 1, ret=100, tid=11)]
    [r] = rebuild(events).requests
    # THEN the request is the reader's, and write_tid names the writer
    assert (r.tid, r.write_tid) == (10, 11)


def test_a_socket_the_target_connected_is_upstream_and_opens_no_request():
    # GIVEN a request on fd 5 during which the server calls an upstream on fd 7 (connect, write
    # the query, read the answer, close)
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER),
              sock("read", 2, 1, ret=100),
              sock("connect", 4, 1, fd=7), sock("write", 6, 1, ret=64, fd=7), sock("read", 8, 5, ret=512, fd=7),
              sock("close", 14, 0.1, fd=7),
              sock("write", 15, 1, ret=200)]
    rs = rebuild(events)
    # THEN fd 7 is upstream, and the only request is the client's, its bytes its own
    assert rs.upstream_fds == {(PID, 7)}
    assert [(r.fd, r.bytes_in, r.bytes_out, r.start_ns, r.end_ns) for r in rs.requests] == \
        [(5, 100, 200, 3 * MS, 16 * MS)]
    assert rs.connections == 1


def test_an_fd_number_reused_by_accept_after_its_upstream_closed_serves_requests():
    # GIVEN fd 7 first connected upstream and closed, then returned by accept for a client
    events = [sock("connect", 0, 1, fd=7), sock("write", 2, 1, ret=10, fd=7), sock("close", 3, 0.1, fd=7),
              sock("accept4", 5, 1, ret=7, fd=LISTENER),
              sock("read", 7, 1, ret=100, fd=7), sock("write", 9, 1, ret=100, fd=7)]
    rs = rebuild(events)
    # THEN the client's exchange on fd 7 is a request, and its calls count as its own socket's
    # while those made when fd 7 was connected upstream stay upstream
    assert [(r.fd, r.start_ns, r.end_ns, r.conn_start_ns) for r in rs.requests] == [(7, 8 * MS, 10 * MS, 6 * MS)]
    assert family_of(events[1], rs.upstream_fds) == "upstream"
    assert family_of(events[5], rs.upstream_fds) == "socket"


def test_file_io_inside_a_request_is_not_part_of_it_and_counts_as_file():
    # GIVEN a request during which the server reads a file and writes a log line (fd 9, a file)
    file_read = call("pread64", 4, 2, fd=9, kind=FdKind.FILE, ret=4096, source="strace")
    file_write = call("write", 7, 1, fd=9, kind=FdKind.FILE, ret=80, source="strace")
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER), sock("read", 2, 1, ret=100), file_read, file_write,
              sock("write", 9, 1, ret=200)]
    rs = rebuild(events)
    # THEN the request's bytes are its socket's only, and the file calls count as "file" time
    [r] = rs.requests
    assert (r.bytes_in, r.bytes_out, r.reads, r.writes) == (100, 200, 1, 1)
    assert family_of(file_read, rs.upstream_fds) == family_of(file_write, rs.upstream_fds) == "file"


def test_events_are_taken_in_the_order_they_ended_whatever_the_input_order():
    # GIVEN two connections served by two threads, their events shuffled
    events = [sock("accept4", 0, 1, ret=5, fd=LISTENER), sock("accept4", 1, 1, ret=6, fd=LISTENER),
              sock("read", 3, 1, ret=10, fd=6, tid=11), sock("read", 2, 3, ret=10, fd=5),
              sock("write", 6, 1, ret=10, fd=6, tid=11), sock("write", 7, 1, ret=10, fd=5),
              sock("read", 9, 1, ret=10, fd=5), sock("write", 11, 1, ret=10, fd=5)]
    expected = rebuild(events).requests
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    # WHEN the same events are rebuilt in another order
    got = rebuild(shuffled).requests
    # THEN the same requests, sorted by start
    assert got == expected
    assert [(r.fd, r.start_ns) for r in got] == [(6, 4 * MS), (5, 5 * MS), (5, 10 * MS)]


@pytest.mark.parametrize("name, fd, kind, family", [
    ("write", 5, FdKind.SOCKET, "socket"),      # the client's own connection
    ("recvfrom", 5, FdKind.SOCKET, "socket"),
    ("read", 7, FdKind.SOCKET, "upstream"),     # a socket the target connected
    ("sendto", 7, FdKind.SOCKET, "upstream"),
    ("connect", 7, FdKind.SOCKET, "upstream"),
    ("pwrite64", 9, FdKind.FILE, "file"),
    ("fdatasync", 9, FdKind.FILE, "sync"),
    ("futex", None, FdKind.UNKNOWN, "futex"),
    ("epoll_wait", 4, FdKind.OTHER, "poll"),
    ("mmap", None, FdKind.UNKNOWN, "other"),
])
def test_family_of_a_call_in_a_request_breakdown(name, fd, kind, family):
    ev = call(name, 0, 1, fd=fd, kind=kind, source="strace")
    assert family_of(ev, {(PID, 7)}) == family
