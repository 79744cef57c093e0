"""Guest-visible paravirtual ABIs, one module per ABI, constants named as their specs name them."""
