"""Host-side preprocessing: images -> patch rows, conversations -> token ids, index work -> positions."""
