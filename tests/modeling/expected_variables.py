"""The variables (name -> shape) a model must create, written from tensorpack's naming scheme.

Independent of the model code on purpose: it spells out, layer by layer, the names and shapes
of tensorpack's FasterRCNN checkpoints (model-zoo `.npz` files), so a renamed scope or a
transposed kernel shows up as a diff. Kernels are [kh, kw, in, out] for convolutions,
[kh, kw, out, in] for the transposed convolution, and [in, out] for fully connected layers
(the input flattened in C, H, W order).
"""

RESNET_WIDTHS = (64, 128, 256, 512)   # bottleneck widths of group0..3; outputs are 4x wider


def _norm(prefix, channels, norm):
    if norm in ('FreezeBN', 'SyncBN'):
        return {prefix + '/bn/' + name: [channels] for name in ('gamma', 'beta', 'mean/EMA', 'variance/EMA')}
    if norm == 'GN':
        return {prefix + '/gn/gamma': [channels], prefix + '/gn/beta': [channels]}
    return {}


def _conv_norm(prefix, kernel, c_in, c_out, norm):
    """A backbone conv: never a bias (tensorpack's backbone argscope has use_bias=False), even
    with norm='None'; then the conv is all there is."""
    out = {prefix + '/W': [kernel, kernel, c_in, c_out]}
    out.update(_norm(prefix, c_out, norm))
    return out


def _conv(prefix, kernel, c_in, c_out):
    return {prefix + '/W': [kernel, kernel, c_in, c_out], prefix + '/b': [c_out]}


def _fc(prefix, d_in, d_out):
    return {prefix + '/W': [d_in, d_out], prefix + '/b': [d_out]}


def _gn(prefix, channels):
    return {prefix + '/gamma': [channels], prefix + '/beta': [channels]}


def resnet(num_blocks, norm='FreezeBN', groups=(0, 1, 2, 3)):
    """conv0 and the bottleneck groups `groups` with num_blocks[g] blocks each."""
    out = {}
    if 0 in groups:
        out.update(_conv_norm('conv0', 7, 3, 64, norm))
    c_in = 64
    for group in range(4):
        width = RESNET_WIDTHS[group]
        for block in range(num_blocks[group]):
            prefix = 'group{}/block{}/'.format(group, block)
            if group in groups:
                out.update(_conv_norm(prefix + 'conv1', 1, c_in, width, norm))
                out.update(_conv_norm(prefix + 'conv2', 3, width, width, norm))
                out.update(_conv_norm(prefix + 'conv3', 1, width, width * 4, norm))
                if block == 0:
                    out.update(_conv_norm(prefix + 'convshortcut', 1, c_in, width * 4, norm))
            c_in = width * 4
    return out


def fpn(channels, norm='None'):
    out = {}
    for level, c_in in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        out.update(_conv('fpn/lateral_1x1_c{}'.format(level), 1, c_in, channels))
        out.update(_conv('fpn/posthoc_3x3_p{}'.format(level), 3, channels, channels))
        if norm == 'GN':
            out.update(_gn('fpn/gn_c{}'.format(level), channels))
            out.update(_gn('fpn/gn_p{}'.format(level), channels))
    return out


def rpn(c_in, hidden, num_anchors):
    out = _conv('rpn/conv0', 3, c_in, hidden)
    out.update(_conv('rpn/class', 1, hidden, num_anchors))
    out.update(_conv('rpn/box', 1, hidden, 4 * num_anchors))
    return out


def box_head(prefix, head, c_in, conv_dim, fc_dim, resolution=7):
    """The FPN box heads of model_frcnn."""
    if head == 'fastrcnn_2fc_head':
        out = _fc(prefix + '/fc6', c_in * resolution * resolution, fc_dim)
        out.update(_fc(prefix + '/fc7', fc_dim, fc_dim))
        return out
    out = {}
    for k in range(4):
        out.update(_conv('{}/conv{}'.format(prefix, k), 3, c_in if k == 0 else conv_dim, conv_dim))
        if head == 'fastrcnn_4conv1fc_gn_head':
            out.update(_gn('{}/gn{}'.format(prefix, k), conv_dim))
    out.update(_fc(prefix + '/fc', conv_dim * resolution * resolution, fc_dim))
    return out


def box_outputs(prefix, d_in, num_category, class_agnostic=False):
    out = _fc(prefix + '/class', d_in, num_category + 1)
    out.update(_fc(prefix + '/box', d_in, 4 * (1 if class_agnostic else num_category + 1)))
    return out


def mask_head(c_in, head_dim, num_category, num_convs, gn=False):
    out = {}
    for k in range(num_convs):
        out.update(_conv('maskrcnn/fcn{}'.format(k), 3, c_in if k == 0 else head_dim, head_dim))
        if gn:
            out.update(_gn('maskrcnn/gn{}'.format(k), head_dim))
    deconv_in = head_dim if num_convs else c_in
    out['maskrcnn/deconv/W'] = [2, 2, head_dim, deconv_in]
    out['maskrcnn/deconv/b'] = [head_dim]
    out.update(_conv('maskrcnn/conv', 1, head_dim, num_category))
    return out


def fpn_model(num_blocks=(3, 4, 6, 3), num_category=80, mask=True, norm='FreezeBN', fpn_channels=256,
              fpn_norm='None', num_ratios=3, box_head_name='fastrcnn_2fc_head', conv_head_dim=256,
              fc_head_dim=1024, mask_head_name='maskrcnn_up4conv_head', mask_head_dim=256, cascade_stages=0):
    """All variables of a ResNet-FPN model (R50-FPN Mask R-CNN with the defaults)."""
    out = resnet(num_blocks, norm)
    out.update(fpn(fpn_channels, fpn_norm))
    out.update(rpn(fpn_channels, fpn_channels, num_ratios))
    if cascade_stages:
        for stage in range(1, cascade_stages + 1):
            prefix = 'cascade_rcnn_stage{}'.format(stage)
            out.update(box_head(prefix + '/head', box_head_name, fpn_channels, conv_head_dim, fc_head_dim))
            out.update(box_outputs(prefix + '/outputs', fc_head_dim, num_category, class_agnostic=True))
    else:
        out.update(box_head('fastrcnn', box_head_name, fpn_channels, conv_head_dim, fc_head_dim))
        out.update(box_outputs('fastrcnn/outputs', fc_head_dim, num_category))
    if mask:
        out.update(mask_head(fpn_channels, mask_head_dim, num_category, 4,
                             gn=mask_head_name == 'maskrcnn_up4conv_gn_head'))
    return out


def c4_model(num_blocks=(3, 4, 6, 3), num_category=80, mask=True, norm='FreezeBN', rpn_head_dim=1024,
             num_anchors=15, mask_head_dim=256):
    """All variables of a ResNet-C4 model (R50-C4 Mask R-CNN with the defaults)."""
    out = resnet(num_blocks, norm)   # groups 0-2 in the backbone, group3 as the roi head
    out.update(rpn(1024, rpn_head_dim, num_anchors))
    out.update(box_outputs('fastrcnn', 2048, num_category))
    if mask:
        out.update(mask_head(2048, mask_head_dim, num_category, 0))
    return out
