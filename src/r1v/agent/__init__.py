"""r1v.agent"""
