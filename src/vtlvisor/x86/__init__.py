"""Architectural x86 knowledge: constants, page walks, descriptors, event delivery, decode, CPUID/MSRs."""
