"""vtlvisor: a hypervisor in Python giving x86-64 guests virtualization-based security.

Guest code runs on the Unicorn engine held in emulated AMD-SVM guest mode, so that control-register,
MSR, descriptor-table, exception and hypercall events arrive as VM exits; see docs/architecture.md.
"""

__version__ = "0.1.0"
