/** qimg's portable core: no Node APIs here (see ./node.js for files on disk). */
export { ImageError, isImageError, type ImageErrorCode } from './errors.js';
export type { Storage } from './io/storage.js';
export { MemoryStorage } from './io/memory.js';
export type { Codecs } from './block/codecs.js';
export type { FormatDriver, Mapping, ImageFormat, BackingRef, DriverContext } from './block/driver.js';
export type { ImageInfo, SnapshotInfo, FormatSpecific } from './block/info.js';
export { BlockImage, extents, type Image, type Extent, type LayerStatus } from './block/image.js';
export { openImage, registerFormat, type Host, type OpenOptions, type OpenPolicy } from './block/open.js';
export { probeFormat } from './block/probe.js';
import './formats/index.js';
