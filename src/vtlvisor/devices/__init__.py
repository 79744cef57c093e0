"""Device models. They see guest RAM (``GuestMemory``) and the virtual clock, never the CPU engine."""
