/* gpushim.h: gpushim has no API to call. It is controlled by GPUSHIM_* environment variables
 * (`gpushim-options` lists them) and works by LD_PRELOAD on unmodified programs:
 *
 *     LD_PRELOAD=/path/libgpushim.so GPUSHIM_MODE=pool python train.py
 *
 * This header only names the version, for build systems that want to check it. */
#ifndef GPUSHIM_H
#define GPUSHIM_H

#define GPUSHIM_VERSION_MAJOR 0
#define GPUSHIM_VERSION_MINOR 1
#define GPUSHIM_VERSION_PATCH 0

#endif
