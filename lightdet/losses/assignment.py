"""Linear sum assignment (the "Hungarian" matching of DETR) in NumPy: a shortest augmenting path solver.

Given a cost matrix C (n × m), pick min(n, m) pairs (i, j), no row or column twice, with the least total cost.
This is the Jonker–Volgenant form (Jonker & Volgenant, Computing 1987) that scipy's `linear_sum_assignment`
uses (Crouse, IEEE TAES 2016): rows are added one at a time; for each new row, Dijkstra's algorithm over the
*reduced* costs C[i, j] − u[i] − v[j] finds the cheapest way to give it a column, possibly by moving already
assigned rows to other columns along the path. The dual variables u, v keep every reduced cost on an
assigned pair at 0 and all others ≥ 0, which is what makes Dijkstra valid and the final assignment optimal.
Each Dijkstra step is one vectorised update over all columns, so a 300 × 50 matching (DETR's 300 queries
against 50 objects) takes a few milliseconds.
"""
import numpy as np


def linear_sum_assignment(cost):
    """Minimum-cost assignment: cost `array[n, m]` (NumPy or torch, finite) -> (rows, cols), int64 arrays of
    min(n, m) pairs with rows ascending, as `scipy.optimize.linear_sum_assignment(cost)` returns them."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"linear_sum_assignment: cost must be a 2-D matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("linear_sum_assignment: cost has NaN or infinite entries")
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:   # the solver assigns every row, so rows must be the shorter side
        cost = cost.T
    num_rows, num_cols = cost.shape
    u, v = np.zeros(num_rows), np.zeros(num_cols)      # dual variables of rows and columns
    col_of_row = np.full(num_rows, -1)
    row_of_col = np.full(num_cols, -1)
    for new_row in range(num_rows):
        sink, shortest, path, visited_rows, visited_cols = _shortest_augmenting_path(
            cost, u, v, new_row, row_of_col, col_of_row)
        # Dual update: keeps reduced costs ≥ 0 and 0 on the assignment, including the pairs about to change.
        distance = shortest[sink]
        u[new_row] += distance
        others = visited_rows[visited_rows != new_row]
        u[others] += distance - shortest[col_of_row[others]]
        v[visited_cols] -= distance - shortest[visited_cols]
        # Augment: walk the path back from the free column, shifting each row on it to its new column.
        col = sink
        while True:
            row = path[col]
            row_of_col[col] = row
            col_of_row[row], col = col, col_of_row[row]
            if row == new_row:
                break
    rows, cols = np.arange(num_rows), col_of_row
    if transposed:
        rows, cols = cols, rows
        order = np.argsort(rows)
        rows, cols = rows[order], cols[order]
    return rows.astype(np.int64), cols.astype(np.int64)


def _shortest_augmenting_path(cost, u, v, new_row, row_of_col, col_of_row):
    """Dijkstra from `new_row` to the nearest unassigned column, over reduced costs.

    Returns (sink column, shortest distance to every column, path: the row each column was reached from,
    the rows and the columns whose distance is final).
    """
    num_cols = cost.shape[1]
    shortest = np.full(num_cols, np.inf)
    path = np.full(num_cols, -1)
    done = np.zeros(num_cols, dtype=bool)   # columns whose shortest distance is final
    visited_rows = [new_row]
    row, distance = new_row, 0.0
    while True:
        # Relax every open column through `row`: reached at `distance`, then its reduced cost to each column.
        through_row = distance + cost[row] - u[row] - v
        better = ~done & (through_row < shortest)
        shortest[better] = through_row[better]
        path[better] = row
        # Settle the nearest open column; among equally near ones prefer a free column (ends the search).
        open_distance = np.where(done, np.inf, shortest)
        distance = open_distance.min()
        if distance == np.inf:
            raise ValueError("linear_sum_assignment: no feasible assignment")
        nearest = np.flatnonzero(open_distance == distance)
        free = nearest[row_of_col[nearest] < 0]
        col = free[0] if free.size else nearest[0]
        done[col] = True
        if row_of_col[col] < 0:
            return col, shortest, path, np.array(visited_rows), np.flatnonzero(done)
        row = row_of_col[col]   # the column is taken: continue from the row that holds it
        visited_rows.append(row)
