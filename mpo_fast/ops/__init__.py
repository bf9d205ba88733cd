"""One module per op: boundary validation, torch.library custom op, backend dispatch."""
