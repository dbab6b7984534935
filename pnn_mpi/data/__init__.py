"""The data: the IDX format, which dataset files and where, downloading them, image files for
predict, each rank's slice, and the node reader that inflates each file once per node.
"""
