"""honed: research methods that make deep networks cheaper, tougher and more private, each with a
small-scale reproduction that measures its paper's claim.

Components live in family packages (``honed.efficient``, ``honed.distributed``, ...) and import
nothing from the experiment machinery; ``honed.experiments`` holds one reproduction per method.
"""
__version__ = "0.1.0"
