"""r1v.train"""
