"""Per-pixel feature sets: classical filters, deep (HR-Dv2), hybrid; PCA; caching."""
