"""slimdiff.toy"""
