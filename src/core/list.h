/* list: intrusive doubly linked lists.
 *
 * th_qlink: a circular list used as a queue (in the way of libuv's queue.h). A th_qlink is embedded in
 * the element; a list head is a th_qlink too (th_q_init: it points at itself). An element that is not on
 * a list has next == NULL, so th_q_unlink is safe to call twice. TH_Q_OF turns a link back into its
 * element.
 *
 * TH_DL_*: the same operations on a NULL-terminated list whose elements carry their own prev/next
 * pointers (named by the caller, so one element can be on several lists), with a head pointer and,
 * for the *_T forms, a tail pointer. Nothing is allocated. */
#ifndef TH_CORE_LIST_H
#define TH_CORE_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct th_qlink {
    struct th_qlink *prev, *next;
} th_qlink;

/** The element of type that holds link ptr in its member. */
#define TH_Q_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void th_q_init(th_qlink *h)
{
    h->prev = h->next = h;
}
static inline bool th_q_empty(const th_qlink *h)
{
    return h->next == h;
}
/** true while l is on a list (links start zeroed, and th_q_unlink zeroes them again) */
static inline bool th_q_linked(const th_qlink *l)
{
    return l->next != NULL;
}
/** Appends l at the tail of h. */
static inline void th_q_push(th_qlink *h, th_qlink *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}
/** Puts l at the head of h. */
static inline void th_q_push_head(th_qlink *h, th_qlink *l)
{
    l->next = h->next;
    l->prev = h;
    h->next->prev = l;
    h->next = l;
}
/** Takes l off its list (nothing when it is on none). */
static inline void th_q_unlink(th_qlink *l)
{
    if (!th_q_linked(l)) return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

/** Takes e off the list at head (..._T: with a tail too); e's links are NULL afterwards. */
#define TH_DL_UNLINK(head, e, prev, next)                                                                    \
    do {                                                                                                     \
        if ((e)->prev)                                                                                       \
            (e)->prev->next = (e)->next;                                                                     \
        else                                                                                                 \
            (head) = (e)->next;                                                                              \
        if ((e)->next) (e)->next->prev = (e)->prev;                                                          \
        (e)->prev = (e)->next = NULL;                                                                        \
    } while (0)
#define TH_DL_UNLINK_T(head, tail, e, prev, next)                                                            \
    do {                                                                                                     \
        if ((e)->prev)                                                                                       \
            (e)->prev->next = (e)->next;                                                                     \
        else                                                                                                 \
            (head) = (e)->next;                                                                              \
        if ((e)->next)                                                                                       \
            (e)->next->prev = (e)->prev;                                                                     \
        else                                                                                                 \
            (tail) = (e)->prev;                                                                              \
        (e)->prev = (e)->next = NULL;                                                                        \
    } while (0)
/** Puts e first on the list at head (..._T: with a tail too). */
#define TH_DL_PUSH_FRONT(head, e, prev, next)                                                                \
    do {                                                                                                     \
        (e)->prev = NULL;                                                                                    \
        (e)->next = (head);                                                                                  \
        if (head) (head)->prev = (e);                                                                        \
        (head) = (e);                                                                                        \
    } while (0)
#define TH_DL_PUSH_FRONT_T(head, tail, e, prev, next)                                                        \
    do {                                                                                                     \
        TH_DL_PUSH_FRONT(head, e, prev, next);                                                               \
        if ((tail) == NULL) (tail) = (e);                                                                    \
    } while (0)
/** Puts e last on the list at head and tail. */
#define TH_DL_PUSH_BACK_T(head, tail, e, prev, next)                                                         \
    do {                                                                                                     \
        (e)->next = NULL;                                                                                    \
        (e)->prev = (tail);                                                                                  \
        if (tail)                                                                                            \
            (tail)->next = (e);                                                                              \
        else                                                                                                 \
            (head) = (e);                                                                                    \
        (tail) = (e);                                                                                        \
    } while (0)

#endif
