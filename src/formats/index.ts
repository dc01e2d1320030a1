/** Every format qimg knows, registered with the block layer. */
import { registerFormat } from '../block/open.js';
import { openQed } from './qed/qed.js';
import { openRaw } from './raw/raw.js';
import { openQcow2 } from './qcow2/qcow2.js';

registerFormat('raw', openRaw);
registerFormat('qcow2', openQcow2);
registerFormat('qed', openQed);
