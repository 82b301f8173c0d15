__version__ = "0.0.1"
from .errors import *
from .session import *
from .routing import *
from .channel import *
from .core import *
from .runs import *
