/** The formats convertToStream can write front to back. */
import { registerStreamWriter } from '../ops/convert-stream.js';
import { qcow2StreamWriter } from './qcow2/stream-writer.js';
import { rawStreamWriter } from './raw/stream-writer.js';

registerStreamWriter('qcow2', qcow2StreamWriter);
registerStreamWriter('raw', rawStreamWriter);
