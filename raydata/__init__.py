"""dsocr.ray"""
