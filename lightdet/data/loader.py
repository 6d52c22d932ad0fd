"""Batches: a collate that builds YOLOv5's (M, 6) targets, and rectangular batches kept intact."""
import torch
from torch.utils.data import DataLoader, Sampler, default_collate


def collate(samples):
    """List of samples -> (images uint8 (B, 3, H, W), targets float32 (M, 6) image_index class cx cy w h,
    paths tuple, shape_infos tuple)."""
    images, labels, paths, shape_infos = zip(*samples)
    targets = torch.cat([torch.cat([torch.full((len(lab), 1), float(i)), lab], 1) for i, lab in enumerate(labels)])
    # default_collate stacks straight into shared memory inside a worker: one copy of the batch, not two.
    return default_collate(list(images)), targets, paths, shape_infos


class RectBatchSampler(Sampler):
    """Fixed batches of consecutive indices (the dataset is sorted by aspect ratio and every batch has its own
    canvas), optionally in shuffled order. With a DistributedSampler, rank r takes batches r, r + world, ...,
    shuffled alike on every rank (from the sampler's seed and epoch, as the sampler itself does)."""

    def __init__(self, num_items, batch_size, shuffle=False, drop_last=False, generator=None, distributed=None):
        self.batches = [list(range(i, min(i + batch_size, num_items))) for i in range(0, num_items, batch_size)]
        if drop_last and self.batches and len(self.batches[-1]) < batch_size:
            self.batches.pop()
        self.shuffle, self.generator, self.distributed = shuffle, generator, distributed

    def __iter__(self):
        order = range(len(self.batches))
        if self.shuffle:
            generator = self.generator
            if self.distributed is not None:
                generator = torch.Generator().manual_seed(self.distributed.seed + self.distributed.epoch)
            order = torch.randperm(len(self.batches), generator=generator).tolist()
        if self.distributed is not None:
            order = order[self.distributed.rank::self.distributed.num_replicas]
        return iter([self.batches[b] for b in order])

    def __len__(self):
        if self.distributed is None:
            return len(self.batches)
        return len(range(self.distributed.rank, len(self.batches), self.distributed.num_replicas))


def build_dataloader(dataset, batch_size, workers=0, shuffle=False, sampler=None, seed=None, drop_last=False,
                     pin_memory=False):
    """A DataLoader of (images, targets, paths, shape_infos) batches (see `collate`).

    Randomness: with `seed=None` the shuffle order and the worker seeds (`random`, numpy, torch) of each epoch
    are drawn from torch's global RNG when the epoch starts, and workers are started afresh every epoch; so
    seeding before each epoch, as train.py does, makes every epoch reproducible, also after a resume. With an
    int `seed` they come from a private generator seeded once: the whole sequence is reproducible from the start.
    With workers=0 the augmentations use the process's own `random`.
    `sampler` may be a DistributedSampler (it then does the shuffling). For a dataset built with rect=True the
    batches are the dataset's own (batch_size must match it) and a DistributedSampler only tells the rank, the
    world size and the shuffling seed: whole batches are split between ranks.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    common = dict(num_workers=workers, collate_fn=collate, pin_memory=pin_memory, generator=generator)
    if getattr(dataset, "rect", False):
        if batch_size != dataset.batch_size:
            raise ValueError(f"the rect dataset was built for batch_size {dataset.batch_size}, "
                             f"the loader asked for {batch_size}")
        batches = RectBatchSampler(len(dataset), batch_size, shuffle, drop_last, generator, sampler)
        return DataLoader(dataset, batch_sampler=batches, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=drop_last, **common)
