"""slimdiff.distill"""
