"""r1v.serve"""
