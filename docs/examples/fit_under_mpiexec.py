"""PNNClassifier under mpiexec: every rank fits on its own share, all end with the same network.

    mpiexec -n 2 python docs/examples/fit_under_mpiexec.py

Needs scikit-learn for the data set and the split only (pnn_mpi itself does not use it).
"""

from mpi4py import MPI
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pnn_mpi import PNNClassifier

rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()

# Every rank loads the same data and splits it the same way (a fixed random_state) ...
X, y = load_digits(return_X_y=True)
X = X / 16.0  # pixels 0-16 scaled to [0, 1]: the network expects inputs of that order
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

# ... and passes only its own share to fit: here every size-th sample from its rank on.
# The shares may differ in size; together they must cover the training set once.
clf = PNNClassifier(hidden=(64,), epochs=20, seed=1)
clf.fit(X_train[rank::size], y_train[rank::size])

# After fit every rank holds the same averaged network: any rank can predict and score.
accuracy = clf.score(X_test, y_test)
if rank == 0:
    print(f"ranks: {size}, epochs: {clf.n_iter_}, test accuracy: {accuracy:.4f}")
    clf.save("digits-model.npz", dataset="digits", image_shape="8x8", ranks=str(size))
