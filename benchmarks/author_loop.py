"""The reference for `make bench`: RSAM trained the way the author's script (and most CIFAR-10
tutorials of its time) does it, in fp32. Its step and epoch are ratio 1.0 in the table.

  * the down-sample network re-run at every glimpse (rsam-dist runs it once per batch: the same
    features, see rsam_dist/model.py);
  * a per-sample `Dataset` over HWC uint8 arrays (what torchvision's CIFAR10 holds) with
    torchvision's ToTensor + Normalize, batched by a shuffling `DataLoader`, images copied to
    the device per batch.

Same layers, parameters, optimizer and loss as rsam-dist, so only the order of work differs.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from rsam_dist.config import ModelConfig
from rsam_dist.data import MEAN, STD, ImageSplit
from rsam_dist.model import RSAM, RSAMOutput, rsam_loss


class PerGlimpseRSAM(RSAM):
    """The author's order of work: the down-sample network re-run at every glimpse."""

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> RSAMOutput:
        image = image.detach()
        zeros = image.new_zeros(image.shape[0], self.config.hidden_size)
        context, glimpse_state = (zeros, zeros), (zeros, zeros)
        logits, masks = [], []
        for step in range(self.config.glimpses):
            context = self.context_lstm(self.attention_input(image), context)
            mask = self.mask_decoder(context[0])
            glimpse_state = self.glimpse_lstm(self.glimpse_net(mask.unsqueeze(1) * image), glimpse_state)
            logits.append(self.classifier(glimpse_state[0]))
            masks.append(mask)
            if self.config.feedback and step < self.config.glimpses - 1:
                context = self.context_lstm(glimpse_state[0], context)
        return RSAMOutput(torch.stack(logits), torch.stack(masks))


class PerSampleImages(Dataset):
    """One image at a time through torchvision's transforms, as torchvision's CIFAR10 serves them."""

    def __init__(self, split: ImageSplit):
        from torchvision import transforms

        self.hwc = split.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = split.labels.tolist()
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,) * 3, (STD,) * 3)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.hwc[index]), self.labels[index]


class AuthorStyleTrainer:
    """The reference model, optimizer and data pipeline, built once; `step` and `epoch` time them."""

    def __init__(self, config: ModelConfig, split: ImageSplit, batch_size: int, device: torch.device,
                 loader_workers: int = 0):
        torch.manual_seed(0)
        self.config = config
        self.device = device
        self.model = PerGlimpseRSAM(config).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.loader = DataLoader(PerSampleImages(split), batch_size=batch_size, shuffle=True, drop_last=True,
                                 num_workers=loader_workers)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.model.train()
        loss = rsam_loss(self.model(images), labels, self.config)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def epoch(self) -> int:
        """One pass over the loader; returns the images trained on."""
        seen = 0
        for images, labels in self.loader:
            images, labels = images.to(self.device), labels.to(self.device)
            self.step(images, labels).item()  # the usual running-loss print reads it every step
            seen += labels.shape[0]
        return seen
