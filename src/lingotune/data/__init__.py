"""Data: read records, build DParT pairs, tokenize with loss masks, write starter data."""
