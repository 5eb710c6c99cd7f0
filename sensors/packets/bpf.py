"""BPF filter expressions ("tcp port 80", "udp or icmp") compiled to classic BPF by libpcap.

libpcap is the maintained compiler of this language (tcpdump's); it is called through ctypes
(`pcap_open_dead` + `pcap_compile`), so no Python binding is needed, only the shared library that
every tcpdump installation has (Debian: libpcap0.8). The result is the list of (code, jt, jf, k)
instructions that `tcpdump -dd` prints, ready for the kernel's SO_ATTACH_FILTER.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

Instruction = tuple[int, int, int, int]
_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
_DLT_FOR_LINKTYPE = {101: 12}  # LINKTYPE_RAW is DLT_RAW (12 on Linux) for pcap_open_dead
_LOCK = threading.Lock()  # pcap_compile is not thread-safe in older libpcap releases


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class BpfError(ValueError):
    """A filter that cannot be compiled (bad syntax, or libpcap missing)."""


def _libpcap() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap")
    if name is None:
        raise BpfError("compiling a capture filter needs libpcap, which was not found; install it (Debian/"
                       "Ubuntu: apt install libpcap0.8, Fedora: dnf install libpcap) or capture without a filter")
    lib = ctypes.CDLL(name)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


def compile_filter(expression: str, linktype: int = 1, snaplen: int = 262144) -> list[Instruction]:
    """The classic BPF program for `expression` on frames of `linktype` (1 Ethernet, 101 raw IP)."""
    lib = _libpcap()
    with _LOCK:
        handle = lib.pcap_open_dead(_DLT_FOR_LINKTYPE.get(linktype, linktype), snaplen)
        if not handle:
            raise BpfError(f"libpcap cannot open a handle for link type {linktype}")
        program = _BpfProgram()
        try:
            if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, _PCAP_NETMASK_UNKNOWN) != 0:
                message = lib.pcap_geterr(handle).decode(errors="replace")
                raise BpfError(f"capture filter {expression!r} does not compile: {message} (the syntax is "
                               "tcpdump's, see `man pcap-filter`; e.g. 'tcp port 80 or udp port 53')")
            out = [(program.bf_insns[i].code, program.bf_insns[i].jt, program.bf_insns[i].jf, program.bf_insns[i].k)
                   for i in range(program.bf_len)]
            lib.pcap_freecode(ctypes.byref(program))
            return out
        finally:
            lib.pcap_close(handle)


def run_filter(program: list[Instruction], packet: bytes) -> bool:
    """Whether a classic BPF program accepts `packet` (a user-space check for tests and for
    filtering files; the kernel runs the same program on live sockets). Supports the instructions
    libpcap emits for plain expressions (loads, jumps, ALU, returns)."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(packet)

    def load(offset: int, size: int) -> int | None:
        if offset < 0 or offset + size > n:
            return None
        return int.from_bytes(packet[offset:offset + size], "big")

    while pc < len(program):
        code, jt, jf, k = program[pc]
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD / LDX
            mode, size = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            if mode == 0x00:  # IMM
                value = k
            elif mode == 0x20:  # ABS
                value = load(k, size)
            elif mode == 0x40:  # IND
                value = load(x + k, size)
            elif mode == 0x60:  # MEM
                value = mem[k]
            elif mode == 0x80:  # LEN
                value = n
            elif mode == 0xA0:  # MSH: 4 * (P[k] & 0xf)
                byte = load(k, 1)
                value = None if byte is None else 4 * (byte & 0x0F)
            else:
                raise BpfError(f"unsupported BPF load mode {mode:#x}")
            if value is None:
                return False  # reading past the packet rejects it, as in the kernel
            if cls == 0x00:
                a = value
            else:
                x = value
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x80:
                a = -a
            elif op == 0x30 and operand == 0:
                return False
            else:
                a = {0x00: a + operand, 0x10: a - operand, 0x20: a * operand, 0x30: a // max(operand, 1),
                     0x40: a | operand, 0x50: a & operand, 0x60: a << operand, 0x70: a >> operand,
                     0x90: a % max(operand, 1), 0xA0: a ^ operand}[op]
            a &= 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += 1 + k
                continue
            operand = x if code & 0x08 else k
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[op]
            pc += 1 + (jt if taken else jf)
            continue
        elif cls == 0x06:  # RET
            return (a if code & 0x18 == 0x10 else k) != 0
        elif cls == 0x07:  # MISC: TAX / TXA
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
        pc += 1
    return False
