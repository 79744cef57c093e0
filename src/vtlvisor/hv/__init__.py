"""The hypervisor proper: partition, vCPU, exit dispatch, virtual time, MSRs."""
