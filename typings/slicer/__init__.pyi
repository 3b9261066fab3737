# Slicer's Python API is typed as Any for the checker (MRML classes, slicer.app, slicer.util …).
from typing import Any

mrmlScene: Any
app: Any
modules: Any
util: Any

def __getattr__(name: str) -> Any: ...
