"""A passive packet tap on the loopback interface: `python -m bench.wire_child PORT`.

Measures when each event's record leaves its client for the broker: the kernel's receive
timestamp (CLOCK_REALTIME, comparable to `time.time()`) of the first TCP segment towards the
broker's PORT on ``lo`` whose payload holds the event's id, a lowercase UUID string (the
``event_id`` header of every record the latency scenario sends, uncompressed). Retransmits and
repeats keep the first time.

Passive: an AF_PACKET socket sees a copy of each segment; nothing stands between client and
broker (no proxy hop, nothing added to the path being measured), and the clients and the broker
are unchanged. The time is the kernel's, stamped as the segment crosses ``lo``, so the tap's own
scheduling (when it gets to read a packet) does not move it. A classic BPF filter in the kernel
keeps only IPv4 TCP segments to PORT, so the tap wakes for little else.

Prints ``ready`` once the socket is set up, reads until its standard input closes, then prints
one JSON object: event id -> wire time (s). Its statistics (packets read, with payload, ids,
its own CPU seconds) go to standard error.
"""

from __future__ import annotations

import ctypes
import json
import re
import socket
import struct
import sys
import threading
import time

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
RCVBUF = 32 * 1024 * 1024
SNAPLEN = 262144
#: Bytes of a connection's previous payload searched again with the next: an id split across
#: two segments is found (a UUID string is 36 bytes).
TAIL = 48

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESPEC = struct.Struct("@qq")


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


# Classic BPF opcodes used below (linux/filter.h).
BPF_LDB_ABS = 0x30  # ldb [k]
BPF_LDH_IND = 0x48  # ldh [x + k]
BPF_LDXB_MSH = 0xB1  # ldxb 4 * ([k] & 0xf)
BPF_JEQ_K = 0x15  # jeq #k, jt, jf (offsets relative to the next instruction)
BPF_RET_K = 0x06  # ret #k


def tcp_to_port(port: int) -> list[tuple[int, int, int, int]]:
    """The filter on the IP header (SOCK_DGRAM: the packet starts at the IP header): IPv4
    protocol TCP and destination port `port`, else drop. (IPv4 is the socket's protocol.)"""
    return [
        (BPF_LDB_ABS, 0, 0, 9),  # 0: A = protocol
        (BPF_JEQ_K, 0, 4, socket.IPPROTO_TCP),  # 1: TCP ? 2 : 6 (drop)
        (BPF_LDXB_MSH, 0, 0, 0),  # 2: X = IP header length
        (BPF_LDH_IND, 0, 0, 2),  # 3: A = TCP destination port
        (BPF_JEQ_K, 0, 1, port),  # 4: PORT ? 5 (accept) : 6 (drop)
        (BPF_RET_K, 0, 0, SNAPLEN),  # 5: accept, whole packet
        (BPF_RET_K, 0, 0, 0),  # 6: drop
    ]


def attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    instructions = (SockFilter * len(program))(*(SockFilter(*i) for i in program))
    fprog = SockFprog(len(program), instructions)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def open_tap(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    attach(sock, tcp_to_port(port))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("lo", ETH_P_IP))  # Python converts this one to network order itself
    # The filter is attached before bind, but a packet queued in between would not have been
    # through it: drop whatever is queued now.
    sock.setblocking(False)
    try:
        while True:
            sock.recv(1)
    except BlockingIOError:
        pass
    sock.setblocking(True)
    return sock


def main() -> None:
    port = int(sys.argv[1])
    sock = open_tap(port)
    sock.settimeout(0.05)
    halt = threading.Event()

    def wait_for_stdin() -> None:
        sys.stdin.read()
        halt.set()

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    seen: dict[str, float] = {}
    tails: dict[int, bytes] = {}
    packets = with_payload = outgoing = unstamped = 0
    ancsize = socket.CMSG_SPACE(TIMESPEC.size)
    unpack_ts = TIMESPEC.unpack_from
    finditer = UUID.finditer
    print("ready", flush=True)
    while True:
        try:
            data, anc, _, addr = sock.recvmsg(SNAPLEN, ancsize)
        except TimeoutError:
            if halt.is_set():
                # Stdin closed: take what the kernel has queued (stamped already), then stop.
                sock.setblocking(False)
            continue
        except BlockingIOError:
            break
        packets += 1
        if addr[2] == PACKET_OUTGOING:
            # A socket bound to ETH_P_IP on lo gets the incoming copy of each packet only (the
            # outgoing ones go to ETH_P_ALL taps); skipped should one come, so each counts once.
            outgoing += 1
            continue
        ihl = (data[0] & 0xF) * 4
        start = ihl + (data[ihl + 12] >> 4) * 4
        end = (data[2] << 8) | data[3]
        if end <= start:
            continue  # no payload: a bare ACK, SYN, FIN
        with_payload += 1
        sport = (data[ihl] << 8) | data[ihl + 1]
        chunk = tails.get(sport, b"") + data[start:end]
        tails[sport] = chunk[-TAIL:]
        if not anc:
            unstamped += 1
            continue
        sec, nsec = unpack_ts(anc[0][2])
        stamp = sec + nsec * 1e-9
        for m in finditer(chunk):
            key = m.group().decode()
            if key not in seen:
                seen[key] = stamp
    # struct tpacket_stats: packets queued to the socket and dropped (its buffer full), since
    # the last read of the statistics (this one, the first).
    queued, dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock.close()
    cpu = time.process_time()
    print(
        json.dumps(
            {
                "packets": packets,
                "outgoing": outgoing,
                "with_payload": with_payload,
                "unstamped": unstamped,
                "ids": len(seen),
                "kernel_queued": queued,
                "kernel_dropped": dropped,
                "rcvbuf": rcvbuf,
                "cpu_s": round(cpu, 3),
            }
        ),
        file=sys.stderr,
        flush=True,
    )
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
