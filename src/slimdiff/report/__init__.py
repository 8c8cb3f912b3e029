"""slimdiff.report"""
