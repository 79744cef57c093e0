"""vtlvisor capability-scoped security domains: a KVM-style paravirtual ABI (docs/domains.md).

This ABI is vtlvisor's own (the source thread's proposal of a KVM-native VSM-like API in which no
domain holds every capability); it is not upstream KVM. It uses the KVM conventions: a KVM CPUID
feature bit in 0x40000001.EAX, hypercalls by VMMCALL with the number in RAX, arguments in RBX, RCX,
RDX, RSI, and negative errno results in RAX. Numbers are chosen outside upstream's range (1-14).
"""

from enum import IntEnum, IntFlag

#: CPUID KVM_CPUID_FEATURES.EAX bit advertising domains (upstream uses bits 0-17 and 24 is free)
KVM_FEATURE_VTLVISOR_DOMAINS = 24


class DomainHypercall(IntEnum):
    DOMAIN_CREATE = 0x100        # a0 entry RIP, a1 RSP                         -> handle of a DOMAIN cap
    CAP_DELEGATE = 0x101         # a0 handle, a1 recipient DOMAIN handle, a2 rights, a3 narrow GPA|0 -> handle
    #                              (MEMORY: {u64 start, u64 end}; INTERCEPT: {u64 param1} = a subset)
    CAP_REVOKE = 0x102           # a0 handle: delete every capability derived from it (recursively)
    CAP_DELETE = 0x103           # a0 handle, a1 DeleteFlags: revoke, then delete the capability itself
    CAP_QUERY = 0x104            # a0 handle -> RAX type|rights<<8|target<<32, RBX param0, RCX param1
    MEM_PROTECT = 0x105          # a0 handle|perms<<32|immutable<<36, a1 target DOMAIN handle, a2 gpa, a3 pages
    INTERCEPT_SET = 0x106        # a0 INTERCEPT handle, a1 source DOMAIN handle, a2 1=on 0=off
    REGS_GET = 0x107             # a0 DOMAIN handle (REGS_READ), a1 DomainReg     -> RBX value, RAX 0
    REGS_SET = 0x108             # a0 DOMAIN handle (REGS_WRITE), a1 DomainReg, a2 value
    EVENT_INJECT = 0x109         # a0 DOMAIN handle (INJECT), a1 vector, a2 error code (or -1 for none)
    CR_PIN = 0x10A               # a0 PIN handle, a1 CR (0/4), a2 bits to pin high
    DOMAIN_CALL = 0x10B          # a0 DOMAIN handle (CALL); arguments in CALL_ARGS
    DOMAIN_RETURN = 0x10C        # after a call: a1/a2 -> caller's RAX/RDX, RETURN_REGS passed back;
    #                              after an intercept: a0 InterceptAction
    DOMAIN_SELF = 0x10D          # -> RAX this domain's id


class DeleteFlags(IntFlag):
    #: delete only this capability: what was derived from it stays, re-attached to its parent (how a
    #: root task gives capabilities away for good: delegate, then drop its own copy)
    KEEP_DERIVED = 1 << 0


class CapType(IntEnum):
    MEMORY = 1        # param0 = first GPA, param1 = end GPA (exclusive); rights = perms it may grant + IMMUTABLE
    DOMAIN = 2        # target = domain id; rights = CALL | REGS_READ | REGS_WRITE | INJECT
    INTERCEPT = 3     # param0 = InterceptKind, param1 = CR mask / MSR number / descriptor-table mask
    PIN = 4           # param0 = CR number, param1 = pinnable bits
    CREATE = 5        # may create domains


class CapRights(IntFlag):
    R = 1 << 0
    W = 1 << 1
    X = 1 << 2
    IMMUTABLE = 1 << 3        # MEMORY: may make one-way (immutable) grants
    CALL = 1 << 4
    REGS_READ = 1 << 5
    REGS_WRITE = 1 << 6
    INJECT = 1 << 7
    DELEGATE = 1 << 8         # may be delegated further


class InterceptKind(IntEnum):
    CR0 = 1
    CR4 = 2
    MSR = 3
    DTR = 4            # param1 bits: 0 GDTR, 1 IDTR, 2 LDTR, 3 TR
    MEM = 5            # memory violations (accesses outside the source's view); param1 bits: MemAccess


class DomainReg(IntEnum):
    """Registers one domain may read/write in another (named registers only)."""

    RIP = 0
    RSP = 1
    RFLAGS = 2
    RAX = 3
    CR0 = 4
    CR3 = 5
    CR4 = 6
    # read-only (REGS_SET answers -EINVAL): what an integrity monitor needs to know the locked values
    EFER = 7
    STAR = 8
    LSTAR = 9
    CSTAR = 10
    SFMASK = 11
    SYSENTER_CS = 12
    SYSENTER_ESP = 13
    SYSENTER_EIP = 14
    GDTR_BASE = 15
    IDTR_BASE = 16


#: the registers REGS_SET may write
WRITABLE_REGS = frozenset(range(7))


class DomainEvent(IntEnum):
    """RDI when an intercept enters the handler domain (RSI detail, RDX source id, R8 source RIP, R9 value).

    CR_WRITE: RSI = R9 = the new value, R10 = the CR.  MSR_WRITE: RSI = the MSR, R9 = the value.  DTR_WRITE:
    RSI = the table (0 GDTR, 1 IDTR, 2 LDTR, 3 TR), R9 = the new base (GDTR/IDTR) or selector, R10 = the
    limit.  MEM_VIOLATION: RSI = the GPA, R9 = MemAccess, R10 = the domain whose grant the access violated
    (all ones: none recorded)."""

    CR_WRITE = 1
    MSR_WRITE = 2
    DTR_WRITE = 3
    MEM_VIOLATION = 4


class DomainEntry(IntEnum):
    """RAX when a domain is entered (through a call or an intercept), as VSM's VP-assist entry reason."""

    CALL = 0
    INTERCEPT = 1


class MemAccess(IntEnum):
    READ = 0
    WRITE = 1
    EXECUTE = 2


class InterceptAction(IntEnum):
    SKIP = 0          # the instruction is skipped (MEM_VIOLATION: read/write only, else #GP)
    INJECT_GP = 1
    COMPLETE = 2      # CR/MSR/descriptor-table writes only (a violation cannot be completed: #GP)


#: registers a DOMAIN_CALL passes to the callee (the call's own RAX/RBX/RCX are not)
CALL_ARGS = ("rdi", "rsi", "rdx", "r8", "r9", "r10")
#: registers a DOMAIN_RETURN after a call passes back to the caller, beside RAX/RDX (a1/a2)
RETURN_REGS = ("rsi", "r8", "r9", "r10")


#: errno values (Linux) returned negated
EPERM = 1
EBADF = 9
EBUSY = 16
ENOMEM = 12
EINVAL = 22
MAX_DOMAINS = 16
MAX_CAPS_PER_DOMAIN = 256
