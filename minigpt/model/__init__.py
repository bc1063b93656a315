"""One module per architecture: a forward pass over explicit weights."""
