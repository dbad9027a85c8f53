"""The pytorch_optimizer family: every optimizer of that library as po_<name> (records.py; catalog.py, generated;
builders.py).
"""
