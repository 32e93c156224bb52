"""Artifact packaging: runtime C, generated executor and weights -> .so/.h/.manifest."""
